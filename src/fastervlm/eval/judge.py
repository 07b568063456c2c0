"""Judging runs: every prediction of a run asked of the judge once, with the verdicts kept in the run and in a
shared cache, so judging again costs no calls.

A judgment is cached under a key of (the endpoint's host, the requested judge model, prompt version, question,
answer, prediction) (judge_cache.py): what a rerun knows before it asks, so a judge command stopped in any way
(Ctrl-C, SIGTERM, kill -9) pays for nothing twice. It is kept both in the shared cache folder and in the run's own
judgments file, and records every reply the judge gave (one per attempt), the model name the server reported and
the key. Items that stay unjudged are reported and make the command fail; they are never scored as wrong.

Judgments written under older keys stay readable: format 2 (keyed by the served model name) through the served
name remembered for the endpoint, format 1 (no "served_model" field) when the run's judge.json names the same host;
`eval report` counts both.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.judge_cache import JudgeCache, default_cache_dir, judgment_key, legacy_key, served_key
from fastervlm.eval.judge_client import (DEFAULT_JUDGE_MODEL, OPENAI_URL, Judge, JudgeSettings, JudgeUnavailable,
                                         Outcome, api_key_from_env, endpoint_host)
from fastervlm.eval.prompt import PROMPT_VERSION, PROMPTS, judge_messages
from fastervlm.eval.rundir import RunDir, is_error, read_jsonl
from fastervlm.eval.storage import JsonlAppender, write_json_atomic, writing

__all__ = [
    "DEFAULT_JUDGE_MODEL", "JUDGMENTS_FILE", "PROMPTS", "PROMPT_VERSION", "SETTINGS_FILE", "Judge", "JudgeCache",
    "JudgeSettings", "JudgeSummary", "JudgeUnavailable", "api_key_from_env", "default_cache_dir", "judge_messages",
    "judge_run", "judge_runs", "judgment_matches", "read_judgments",
]

JUDGMENTS_FILE = "judgments.jsonl"
SETTINGS_FILE = "judge.json"


@dataclass
class JudgeSummary:
    """One run's judging: how many items, from where, and what is still missing."""

    run_dir: Path
    items: int
    """Predictions to judge (error records have no prediction and are not sent)."""
    cached: int = 0
    judged: int = 0
    failed: int = 0
    """Items whose judge calls failed after every retry (they stay unjudged, never counted as wrong)."""
    not_attempted: int = 0
    calls: int = 0
    """Requests sent (retries included); the token counts below are what the endpoint billed for them."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def missing(self) -> int:
        return self.failed + self.not_attempted

    def line(self) -> str:
        return (
            f"{self.run_dir}: {self.items} predictions, {self.cached} from cache, {self.judged} judged now "
            f"({self.calls} calls, {self.prompt_tokens}+{self.completion_tokens} tokens), {self.failed} failed, "
            f"{self.not_attempted} not attempted"
        )


@dataclass(frozen=True)
class Endpoint:
    """What identifies the judge of a run: its host, the requested model and the prompt version (the key), and the
    model name the server reported last (None until known; it finds judgments cached under the format-2 key)."""

    host: str
    model: str
    prompt_version: str
    served: str | None

    def key(self, prediction: dict[str, Any]) -> str:
        return judgment_key(self.host, self.model, self.prompt_version, prediction["question"], prediction["answer"],
                            prediction["pred"])

    def keys(self, prediction: dict[str, Any]) -> list[str]:
        """Every key a valid judgment of `prediction` by this judge may be stored under, the current one first."""
        older = [] if self.served is None else [served_key(self.host, self.served, self.prompt_version,
                                                           prediction["question"], prediction["answer"],
                                                           prediction["pred"])]
        return [self.key(prediction), *older]


def _record(item_id: str, key: str, outcome: Outcome, served: str, cached: bool) -> dict[str, Any]:
    return {
        "id": item_id,
        "key": key,
        "pred": outcome.pred,
        "score": outcome.score,
        "reply": outcome.reply,
        "replies": outcome.replies,
        "served_model": served,
        "valid": outcome.valid,
        "error": outcome.error,
        "attempts": outcome.attempts,
        "cached": cached,
    }


def read_judgments(run: RunDir, judge_model: str) -> dict[str, dict[str, Any]]:
    """The run's judgments for `judge_model` by id (empty when it was never judged)."""
    path = run.judge_dir(judge_model) / JUDGMENTS_FILE
    return {r["id"]: r for r in read_jsonl(path)} if path.is_file() else {}


def read_judge_settings(run: RunDir, judge_model: str) -> dict[str, Any] | None:
    """The run's judge.json for `judge_model`, or None."""
    path = run.judge_dir(judge_model) / SETTINGS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def recorded_host(settings: dict[str, Any]) -> str:
    """The endpoint host of a judge.json (older ones only have base_url; None there meant api.openai.com)."""
    return settings.get("host") or endpoint_host(settings.get("base_url") or OPENAI_URL)


def judgment_matches(record: dict[str, Any], prediction: dict[str, Any], settings: dict[str, Any], judge_model: str) -> bool:
    """Whether a judgment was made for this prediction (same question, answer and prediction text) by the judge
    that judge.json describes, under the current key or an older one."""
    version = settings.get("prompt_version", PROMPT_VERSION)
    host, q, a, p = recorded_host(settings), prediction["question"], prediction["answer"], prediction["pred"]
    if record.get("key") == judgment_key(host, judge_model, version, q, a, p):
        return True
    if "served_model" in record:
        return record.get("key") == served_key(host, record["served_model"] or judge_model, version, q, a, p)
    return record.get("key") == legacy_key(judge_model, version, q, a, p)


def _lookup(prediction: dict[str, Any], endpoint: Endpoint, reusable: dict[str, dict[str, Any]], cache: JudgeCache,
            legacy: bool) -> dict[str, Any] | None:
    """A valid judgment of this prediction by this judge, under the current key: the run's own, the shared
    cache's, or one stored under an older key (format 2 by the served name; format 1, the run's own when its
    judge.json names the same host)."""
    for key in endpoint.keys(prediction):
        found = [hit for hit in (reusable.get(key), cache.get(key)) if hit is not None]
        if found:  # the one made by the model the server reports now, when the run and the cache differ
            hit = next((h for h in found if h.get("served_model") == endpoint.served), found[0])
            return {**hit, "key": endpoint.key(prediction)}
    if legacy:
        hit = reusable.get(legacy_key(endpoint.model, endpoint.prompt_version, prediction["question"],
                                      prediction["answer"], prediction["pred"]))
        if hit is not None and "served_model" not in hit:
            return {**hit, "key": endpoint.key(prediction)}
    return None


def _stale(hits: list[tuple[dict[str, Any], dict[str, Any]]], judge: Judge, endpoint: Endpoint) -> list[dict[str, Any]]:
    """Cached judgments by another model than the one the server reports now, or reported last (its name moved to a
    new model)."""
    now = judge.served_model or endpoint.served
    return [p for p, hit in hits if now and hit.get("served_model") not in (None, now)]


def judge_run(run: RunDir, judge: Judge, *, progress: bool = True) -> JudgeSummary:
    """Judge every prediction of `run` that has no cached judgment; rewrite its judgments file.

    Judgments are appended to a temporary file as they arrive and cached one by one, so an interrupted run
    loses nothing it paid for; the file replaces the previous one when the run ends (or is stopped). A run
    folder that cannot be written fails before any call.
    """
    settings = judge.settings
    predictions = [p for p in run.predictions().values() if not is_error(p)]
    summary = JudgeSummary(run.path, len(predictions))
    out_dir = run.judge_dir(settings.model)
    fix = f"make {run.path} writable (chmod -R u+w {run.path}), or judge a writable copy of it."
    before = read_judge_settings(run, settings.model)
    cache = JudgeCache(settings.cache_dir or default_cache_dir())
    served = judge.served_model or cache.served_model(judge.host, settings.model)
    if served is None and before is not None and recorded_host(before) == judge.host:
        served = before.get("served_model")
    endpoint = Endpoint(judge.host, settings.model, settings.prompt_version, served)
    with writing(out_dir, fix):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / SETTINGS_FILE, _settings_record(judge, served))
    reusable = {r["key"]: r for r in read_judgments(run, settings.model).values() if r.get("valid")}
    legacy = before is not None and recorded_host(before) == judge.host
    found = [(prediction, _lookup(prediction, endpoint, reusable, cache, legacy)) for prediction in predictions]
    hits = [(prediction, hit) for prediction, hit in found if hit is not None]
    pending = [prediction for prediction, hit in found if hit is None]
    final, partial = out_dir / JUDGMENTS_FILE, out_dir / f"{JUDGMENTS_FILE}.partial"
    with writing(out_dir, fix):
        partial.unlink(missing_ok=True)
    try:
        with JsonlAppender(partial, fix) as out:
            for prediction, hit in hits:
                out.write({**hit, "id": prediction["id"], "cached": True})
            _judge_all(pending, hits, judge, cache, endpoint, out, summary, progress)
    finally:  # what was judged is kept, also when judging stops (a dead endpoint, Ctrl-C)
        with writing(out_dir, fix):
            if partial.exists():
                os.replace(partial, final)
            if judge.served_model:
                write_json_atomic(out_dir / SETTINGS_FILE, _settings_record(judge, judge.served_model))
        if judge.served_model:
            cache.remember_served(judge.host, settings.model, judge.served_model)
    return summary


def _settings_record(judge: Judge, served: str | None) -> dict[str, Any]:
    return {**judge.settings.record(judge.base_url), "host": judge.host, "served_model": served}


def _judge_all(pending: list[dict[str, Any]], hits: list[tuple[dict[str, Any], dict[str, Any]]], judge: Judge,
               cache: JudgeCache, endpoint: Endpoint, out: JsonlAppender, summary: JudgeSummary, progress: bool) -> None:
    """Judge the uncached items, then again the cached ones the server's current model did not make."""
    calls_before, usage_before = judge.calls, dict(judge.usage)
    summary.cached = len(hits)
    asked = len(pending)
    try:
        _judge_pending(pending, judge, cache, endpoint, out, summary, progress)
        stale = _stale(hits, judge, endpoint)
        summary.cached -= len(stale)
        asked += len(stale)
        _judge_pending(stale, judge, cache, endpoint, out, summary, progress)
    finally:
        summary.calls = judge.calls - calls_before
        summary.prompt_tokens = judge.usage["prompt_tokens"] - usage_before["prompt_tokens"]
        summary.completion_tokens = judge.usage["completion_tokens"] - usage_before["completion_tokens"]
        summary.not_attempted = asked - summary.judged - summary.failed


def _down_error(judge: Judge, streak: int, last: Outcome) -> JudgeUnavailable:
    if last.failure == "not_json":
        return JudgeUnavailable(f"{last.error} ({streak} items in a row got no usable answer).")
    if last.failure == "empty":
        return JudgeUnavailable(f"{last.error}, for {streak} items in a row and {judge.settings.max_attempts} attempts "
                                "each: check the server (its logs, and that it serves --judge-model).")
    return JudgeUnavailable(
        f"the judge endpoint {judge.url} looks down: {streak} items in a row failed {judge.settings.max_attempts} "
        f"attempts (last: {last.error})."
    )


def _judge_pending(pending: list[dict[str, Any]], judge: Judge, cache: JudgeCache, endpoint: Endpoint,
                   out: JsonlAppender, summary: JudgeSummary, progress: bool) -> None:
    """Run the thread pool over the uncached items, writing each result as it arrives."""
    from tqdm import tqdm

    if not pending:
        return
    stop = threading.Event()
    streak = 0
    remembered = {endpoint.served}

    def task(prediction: dict[str, Any]) -> tuple[Outcome, str, str] | None:
        """In a worker thread: judge one item and cache a success at once (paid work survives a stop)."""
        if stop.is_set():
            return None
        try:
            outcome = judge.judge(prediction["question"], prediction["answer"], prediction["pred"], stop)
        except JudgeUnavailable:
            stop.set()
            raise
        if outcome.attempts == 0:
            return None
        served = outcome.served_model or endpoint.served or endpoint.model
        key = endpoint.key(prediction)
        if outcome.valid:
            cache.put(key, _record(prediction["id"], key, outcome, served, cached=False))
        if outcome.served_model and outcome.served_model not in remembered:  # now, not at the end: a kill keeps it
            remembered.add(outcome.served_model)
            cache.remember_served(endpoint.host, endpoint.model, outcome.served_model)
        return outcome, key, served

    pool = ThreadPoolExecutor(max_workers=max(1, judge.settings.concurrency), thread_name_prefix="fastervlm-judge")
    bar = tqdm(total=len(pending), desc=f"judge {summary.run_dir.name}", unit="item", disable=not progress, dynamic_ncols=True)
    try:
        futures: dict[Future, dict[str, Any]] = {pool.submit(task, p): p for p in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()  # JudgeUnavailable propagates from here
                if result is None:
                    continue
                outcome, key, served = result
                out.write(_record(futures[future]["id"], key, outcome, served, cached=False))
                summary.judged += outcome.valid
                summary.failed += not outcome.valid
                streak = 0 if outcome.valid or outcome.failure is None else streak + 1
                bar.update(1)
                bar.set_postfix(failed=summary.failed, calls=judge.calls, refresh=False)
                if streak >= min(judge.settings.down_after, len(pending)):
                    stop.set()
                    raise _down_error(judge, streak, outcome)
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)  # requests in flight finish into the cache
        bar.close()


def judge_runs(runs: list[RunDir], settings: JudgeSettings, *, api_key: str | None = None, progress: bool = True,
               report: Callable[[str], None] = print) -> list[JudgeSummary]:
    """Judge several runs; raise when any item is left unjudged (after reporting every run's counts)."""
    if not runs:
        raise FasterVLMError("no run directories found: pass a folder made by `fastervlm eval predict`.")
    judge = Judge(settings, api_key)
    JudgeCache(settings.cache_dir or default_cache_dir()).check_writable()
    summaries: list[JudgeSummary] = []
    for run in runs:
        try:
            summaries.append(judge_run(run, judge, progress=progress))
        except JudgeUnavailable as err:
            for line in (s.line() for s in summaries):
                report(line)
            pending = sum(len([p for p in r.predictions().values() if not is_error(p)]) for r in runs[len(summaries):])
            left = len(runs) - len(summaries)
            raise JudgeUnavailable(
                f"{err} Judging stopped: up to {pending} items of {left} run{'s' if left != 1 else ''} are unjudged "
                "(finished judgments are cached: rerunning costs nothing for them)."
            ) from None
        report(summaries[-1].line())
    missing = sum(s.missing for s in summaries)
    served = f" (served as {judge.served_model} by {judge.host})" if judge.served_model else ""
    report(f"judge {settings.model}{served}: {sum(s.items for s in summaries)} items, "
           f"{sum(s.cached for s in summaries)} cached, {sum(s.judged for s in summaries)} judged, "
           f"{missing} unjudged, {sum(s.calls for s in summaries)} calls")
    if missing:
        raise FasterVLMError(
            f"{missing} items are still unjudged (see the lines above and the 'error' fields in {JUDGMENTS_FILE}); "
            "rerun `fastervlm eval judge` to retry them. The report counts them as missing, not as wrong."
        )
    return summaries
