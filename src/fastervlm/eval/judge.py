"""The LLM judge: the original's prompt, verbatim and versioned, sent through the openai SDK to any
OpenAI-compatible server, with bounded retries, bounded concurrency and an on-disk cache.

Every judgment is cached under a key of (judge model, prompt version, question, answer, prediction), both in a
shared cache folder and in the run's own judgments file, so judging again costs no calls. Items that stay
unjudged are reported and make the command fail; they are never scored as wrong. The API key is only handed
to the SDK: it is scrubbed from every message and never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastervlm.errors import FasterVLMError
from fastervlm.eval.metrics import parse_reply, strict_verdict
from fastervlm.eval.rundir import JsonlAppender, RunDir, is_error, read_jsonl, write_json_atomic

# The prompt of Video-ChatGPT's evaluate_activitynet_qa.py as used by Video-LLaVA/FasterVLM eval_video_qa.py
# (spec 6.2), character for character: the missing separators ("task:------##INSTRUCTIONS: ", "STRING.DO NOT")
# and the double space in "is  a string" are the original's.
_SYSTEM_V1 = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine if "
    "they match meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful "
    "match between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid "
    "matches.\n- Evaluate the correctness of the prediction compared to the answer."
)
_USER_V1 = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: "
    "{answer}\nPredicted Answer: {pred}\n\nProvide your evaluation only as a yes/no and score where the score is an "
    "integer value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response in "
    "the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' "
    "or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. "
    "Only provide the Python dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4.8}}."
)


def _messages_v1(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _SYSTEM_V1},
        {"role": "user", "content": _USER_V1.format(question=question, answer=answer, pred=pred)},
    ]


PROMPTS: dict[str, Callable[[str, str, str], list[dict[str, str]]]] = {"videollava-qa-v1": _messages_v1}
"""Prompt versions by name. A changed prompt is a new version: cached judgments of the old one stay apart."""
PROMPT_VERSION = "videollava-qa-v1"
DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo"
JUDGMENTS_FILE = "judgments.jsonl"
SETTINGS_FILE = "judge.json"
RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Plus every 5xx: the server may answer later. Other 4xx mean the request or the set-up is wrong."""


def judge_messages(question: str, answer: str, pred: str, version: str = PROMPT_VERSION) -> list[dict[str, str]]:
    """The chat messages for one item."""
    if version not in PROMPTS:
        raise FasterVLMError(f"unknown judge prompt version {version!r}; known: {', '.join(PROMPTS)}.")
    return PROMPTS[version](question, answer, pred)


def default_cache_dir() -> Path:
    """<fastervlm cache>/judge: $FASTERVLM_CACHE/judge or ~/.cache/fastervlm/judge."""
    from fastervlm.tiny import default_cache_dir as fastervlm_cache

    return fastervlm_cache() / "judge"


@dataclass
class JudgeSettings:
    """Which judge, how hard to try and how fast to go."""

    model: str = DEFAULT_JUDGE_MODEL
    base_url: str | None = None
    """None: OPENAI_BASE_URL, else the SDK's default (api.openai.com)."""
    temperature: float = 0.0
    max_attempts: int = 5
    concurrency: int = 8
    timeout: float = 60.0
    backoff: float = 1.0
    """Seconds before the second attempt; doubled for each further one (plus jitter), capped at max_backoff."""
    max_backoff: float = 30.0
    prompt_version: str = PROMPT_VERSION
    cache_dir: Path | None = None
    down_after: int = 3
    """Stop the whole run when this many items in a row (or all of them, when fewer) exhausted their attempts on
    transport errors."""

    def __post_init__(self) -> None:
        limits = {"concurrency (--concurrency)": self.concurrency, "max_attempts (--max-attempts)": self.max_attempts,
                  "down_after": self.down_after}
        for name, value in limits.items():
            if not isinstance(value, int) or value < 1:
                raise FasterVLMError(f"judge setting {name} must be a whole number of at least 1 (got {value!r}).")
        if not self.timeout > 0:
            raise FasterVLMError(f"judge timeout (--judge-timeout) must be above 0 seconds (got {self.timeout!r}).")

    def record(self, base_url: str | None) -> dict[str, Any]:
        """What judge.json keeps: no key, and no credentials embedded in the URL."""
        out = {k: v for k, v in asdict(self).items() if k not in ("cache_dir", "base_url")}
        out["judge_model"] = out.pop("model")
        out["base_url"] = _public_url(base_url)
        return out


def _public_url(url: str | None) -> str | None:
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def cache_key(model: str, prompt_version: str, question: str, answer: str, pred: str) -> str:
    return hashlib.sha256(json.dumps([model, prompt_version, question, answer, pred]).encode()).hexdigest()


def api_key_from_env() -> str:
    """$OPENAI_API_KEY, or an error that names it (checked before long work that ends with judging)."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise FasterVLMError(
            "the judge needs an API key: set OPENAI_API_KEY (any non-empty value for a local server that ignores it)."
        )
    return key


class JudgeCache:
    """One small JSON file per successful judgment, written atomically (safe across processes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, record: dict[str, Any]) -> None:
        write_json_atomic(self._path(key), record)


class JudgeUnavailable(FasterVLMError):
    """The endpoint refuses every request (down, wrong URL, bad key, unknown model): stop the whole run."""


@dataclass
class Outcome:
    """One item's judgment: the reply and what it means, or why there is none."""

    reply: str | None = None
    pred: str | None = None
    score: float | None = None
    error: str | None = None
    attempts: int = 0
    transport_failure: bool = False

    @property
    def valid(self) -> bool:
        return self.error is None


class Judge:
    """An OpenAI-compatible chat endpoint that answers one item at a time (call it from many threads)."""

    def __init__(self, settings: JudgeSettings, api_key: str | None = None):
        import openai

        self.settings = settings
        self.api_key = api_key or api_key_from_env()
        self.base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._openai = openai
        self._client = openai.OpenAI(api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=settings.timeout)
        self._lock = threading.Lock()
        self.calls = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}

    def scrub(self, text: str) -> str:
        """`text` without the API key in it."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def _delay(self, attempt: int, error: Exception | None) -> float:
        delay = self.settings.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
        response = getattr(error, "response", None)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("retry-after", 0)))
            except ValueError:
                pass
        return min(delay, self.settings.max_backoff)

    def _call(self, messages: list[dict[str, str]]) -> str | None:
        with self._lock:
            self.calls += 1
        response = self._client.chat.completions.create(
            model=self.settings.model, messages=messages, temperature=self.settings.temperature
        )
        usage = getattr(response, "usage", None)
        if usage is not None:
            with self._lock:
                self.usage["prompt_tokens"] += usage.prompt_tokens or 0
                self.usage["completion_tokens"] += usage.completion_tokens or 0
        return response.choices[0].message.content if response.choices else None

    def _is_retryable(self, err: Exception) -> bool:
        if isinstance(err, (self._openai.APIConnectionError, self._openai.APIResponseValidationError)):
            return True  # timeouts, refused connections, a garbled 200
        status = getattr(err, "status_code", None)
        return status is not None and (status in RETRYABLE_STATUS or status >= 500)

    def judge(self, question: str, answer: str, pred: str, stop: threading.Event | None = None) -> Outcome:
        """Ask until a reply parses exactly or `max_attempts` are spent; transport errors and bad replies both
        count as attempts. A non-retryable API error (bad key, unknown model, bad request) raises JudgeUnavailable.
        `stop` ends the retries early, the wait between two attempts included (the run is being stopped)."""
        messages = judge_messages(question, answer, pred, self.settings.prompt_version)
        stop = stop or threading.Event()
        outcome = Outcome()
        for attempt in range(1, self.settings.max_attempts + 1):
            if stop.is_set():
                break
            outcome.attempts = attempt
            error: Exception | None = None
            try:
                reply = self._call(messages)
            except self._openai.APIError as err:
                if not self._is_retryable(err):
                    raise JudgeUnavailable(
                        f"the judge endpoint {_public_url(self.base_url) or 'api.openai.com'} refused the request "
                        f"for model {self.settings.model!r}: {self.scrub(str(err))}. Check --judge-model, "
                        "OPENAI_BASE_URL and OPENAI_API_KEY."
                    ) from None
                error = err
                outcome.transport_failure = True
                outcome.error = self.scrub(f"{type(err).__name__}: {err}")
            else:
                outcome.transport_failure = False
                outcome.reply = self.scrub(reply) if reply is not None else None
                verdict, problem = strict_verdict(parse_reply(reply))
                if verdict is not None:
                    outcome.pred, outcome.score, outcome.error = verdict.pred, verdict.score, None
                    return outcome
                outcome.error = f"unusable reply: {problem}"
            if attempt < self.settings.max_attempts and stop.wait(self._delay(attempt, error)):
                break
        return outcome


@dataclass
class JudgeSummary:
    """One run's judging: how many items, from where, and what is still missing."""

    run_dir: Path
    items: int
    """Predictions to judge (error records have no prediction and are not sent)."""
    cached: int = 0
    judged: int = 0
    failed: int = 0
    not_attempted: int = 0
    calls: int = 0
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


def _record(item_id: str, key: str, outcome: Outcome, cached: bool) -> dict[str, Any]:
    return {
        "id": item_id,
        "key": key,
        "pred": outcome.pred,
        "score": outcome.score,
        "reply": outcome.reply,
        "valid": outcome.valid,
        "error": outcome.error,
        "attempts": outcome.attempts,
        "cached": cached,
    }


def read_judgments(run: RunDir, judge_model: str) -> dict[str, dict[str, Any]]:
    """The run's judgments for `judge_model` by id (empty when it was never judged)."""
    path = run.judge_dir(judge_model) / JUDGMENTS_FILE
    return {r["id"]: r for r in read_jsonl(path)} if path.is_file() else {}


def prediction_key(settings_or_model: JudgeSettings | str, prediction: dict[str, Any], prompt_version: str | None = None) -> str:
    """The cache key of one prediction record under a judge model and prompt version."""
    if isinstance(settings_or_model, JudgeSettings):
        model, version = settings_or_model.model, settings_or_model.prompt_version
    else:
        model, version = settings_or_model, prompt_version or PROMPT_VERSION
    return cache_key(model, version, prediction["question"], prediction["answer"], prediction["pred"])


def judge_run(run: RunDir, judge: Judge, *, progress: bool = True) -> JudgeSummary:
    """Judge every prediction of `run` that has no cached judgment; rewrite its judgments file.

    Judgments are appended to a temporary file as they arrive and cached one by one, so an interrupted run
    loses nothing it paid for; the file replaces the previous one when the run ends (or is stopped).
    """
    from tqdm import tqdm

    settings = judge.settings
    predictions = [p for p in run.predictions().values() if not is_error(p)]
    summary = JudgeSummary(run.path, len(predictions))
    out_dir = run.judge_dir(settings.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / SETTINGS_FILE, settings.record(judge.base_url))
    cache = JudgeCache(settings.cache_dir or default_cache_dir())
    previous = {r["key"]: r for r in read_judgments(run, settings.model).values() if r.get("valid")}
    final, partial = out_dir / JUDGMENTS_FILE, out_dir / f"{JUDGMENTS_FILE}.partial"
    partial.unlink(missing_ok=True)
    calls_before, usage_before = judge.calls, dict(judge.usage)
    pending: list[tuple[dict[str, Any], str]] = []
    with JsonlAppender(partial) as out:
        for prediction in predictions:
            key = prediction_key(settings, prediction)
            hit = previous.get(key) or cache.get(key)
            if hit is not None:
                out.write({**hit, "id": prediction["id"], "key": key, "cached": True})
                summary.cached += 1
            else:
                pending.append((prediction, key))
        try:
            _judge_pending(pending, judge, cache, out, summary, progress, tqdm)
        finally:
            summary.calls = judge.calls - calls_before
            summary.prompt_tokens = judge.usage["prompt_tokens"] - usage_before["prompt_tokens"]
            summary.completion_tokens = judge.usage["completion_tokens"] - usage_before["completion_tokens"]
            summary.not_attempted = len(pending) - summary.judged - summary.failed
            os.replace(partial, final)
    return summary


def _judge_pending(pending, judge: Judge, cache: JudgeCache, out: JsonlAppender, summary: JudgeSummary, progress: bool, tqdm) -> None:  # noqa: ANN001
    """Run the thread pool over the uncached items, writing each result as it arrives."""
    if not pending:
        return
    stop = threading.Event()
    transport_streak, last_error = 0, None

    def task(prediction: dict[str, Any], key: str) -> Outcome | None:
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
        if outcome.valid:
            cache.put(key, _record(prediction["id"], key, outcome, cached=False))
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, judge.settings.concurrency), thread_name_prefix="fastervlm-judge")
    bar = tqdm(total=len(pending), desc=f"judge {summary.run_dir.name}", unit="item", disable=not progress, dynamic_ncols=True)
    try:
        futures: dict[Future, tuple[dict[str, Any], str]] = {pool.submit(task, p, k): (p, k) for p, k in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()  # JudgeUnavailable propagates from here
                if outcome is None:
                    continue
                prediction, key = futures[future]
                record = _record(prediction["id"], key, outcome, cached=False)
                out.write(record)
                if outcome.valid:
                    summary.judged += 1
                    transport_streak = 0
                else:
                    summary.failed += 1
                    transport_streak = transport_streak + 1 if outcome.transport_failure else 0
                    last_error = outcome.error
                bar.update(1)
                bar.set_postfix(failed=summary.failed, calls=judge.calls, refresh=False)
            if transport_streak >= min(judge.settings.down_after, len(pending)):
                stop.set()
                raise JudgeUnavailable(
                    f"the judge endpoint {_public_url(judge.base_url) or 'api.openai.com'} looks down: "
                    f"{transport_streak} items in a row failed {judge.settings.max_attempts} attempts "
                    f"(last: {last_error})."
                )
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
    calls = sum(s.calls for s in summaries)
    report(f"judge {settings.model}: {sum(s.items for s in summaries)} items, "
           f"{sum(s.cached for s in summaries)} cached, {sum(s.judged for s in summaries)} judged, "
           f"{missing} unjudged, {calls} calls")
    if missing:
        raise FasterVLMError(
            f"{missing} items are still unjudged (see the lines above and the 'error' fields in {JUDGMENTS_FILE}); "
            "rerun `fastervlm eval judge` to retry them. The report counts them as missing, not as wrong."
        )
    return summaries
