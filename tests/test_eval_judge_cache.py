"""What identifies a judge in the cache: the endpoint's host and the model name the server reports. Two servers
that both call their model "gpt-3.5-turbo" never share verdicts; a new model behind an old name is noticed at the
first live call; judgments made before this key stay readable."""

from __future__ import annotations

import json
from pathlib import Path

from eval_helpers import make_run
from fake_openai_server import FakeOpenAI

from fastervlm.eval.judge import JudgeSettings, judge_runs, read_judgments
from fastervlm.eval.judge_cache import JudgeCache, judgment_key, legacy_key
from fastervlm.eval.prompt import PROMPT_VERSION
from fastervlm.eval.report import build_report

KEY = "sk-test-cache"
ANSWERS = {f"q{i}": (f"answer{i}", f"it is answer{i}" if i % 2 else "something else") for i in range(6)}


def _judge(runs, server: FakeOpenAI, cache: Path, **kw):
    settings = JudgeSettings(base_url=server.url, cache_dir=cache, backoff=0.001, **kw)
    return judge_runs(runs, settings, api_key=KEY, progress=False, report=lambda _: None)


def test_two_servers_with_the_same_model_name_do_not_share_verdicts(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI() as a, FakeOpenAI() as b:
        _judge([run], a, tmp_path / "cache")
        summary, = _judge([run], b, tmp_path / "cache")
        assert (len(a.calls), len(b.calls), summary.cached) == (6, 6, 0)
        host_b = f"127.0.0.1:{b.port}"
    judgments = read_judgments(run, "gpt-3.5-turbo")
    q = json.loads((run.path / "items.json").read_text())[0]
    assert judgments["q0"]["served_model"] == "gpt-3.5-turbo"
    assert judgments["q0"]["key"] == judgment_key(host_b, "gpt-3.5-turbo", PROMPT_VERSION, q["question"], q["answer"],
                                                  "something else")
    assert json.loads((run.judge_dir("gpt-3.5-turbo") / "judge.json").read_text())["host"] == host_b


def test_the_served_model_is_recorded_and_remembered(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI(served_model="gpt-3.5-turbo-0125") as server:
        _judge([run], server, tmp_path / "cache")
        again, = _judge([run], server, tmp_path / "cache")
        assert (len(server.calls), again.cached) == (6, 6)  # the remembered served name finds them
        # On another machine (no shared cache), the run's own judgments and judge.json are enough.
        elsewhere, = _judge([run], server, tmp_path / "other-cache")
        assert (len(server.calls), elsewhere.cached) == (6, 6)
        host = f"127.0.0.1:{server.port}"
    assert {j["served_model"] for j in read_judgments(run, "gpt-3.5-turbo").values()} == {"gpt-3.5-turbo-0125"}
    assert json.loads((run.judge_dir("gpt-3.5-turbo") / "judge.json").read_text())["served_model"] == "gpt-3.5-turbo-0125"
    assert JudgeCache(tmp_path / "cache").served_model(host, "gpt-3.5-turbo") == "gpt-3.5-turbo-0125"
    report = build_report([run.path])
    assert report.results[0].metrics.judged == 6


def test_a_new_model_behind_the_same_name_is_noticed_at_the_first_live_call(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    twin = make_run(tmp_path / "twin", {**ANSWERS, "q6": ("answer6", "new item")})
    with FakeOpenAI(served_model="snapshot-1") as old:
        _judge([run], old, tmp_path / "cache")
        port = old.port
    with FakeOpenAI(served_model="snapshot-2", port=port) as new:  # same address, another model behind the name
        summary, = _judge([twin], new, tmp_path / "cache")
        # q6 is asked live, the answer names snapshot-2, so the six snapshot-1 verdicts are asked again.
        assert (len(new.calls), summary.judged, summary.cached) == (7, 7, 0)
        again, = _judge([run], new, tmp_path / "cache")  # the cache now knows snapshot-2: the twin's verdicts serve
        assert (len(new.calls), again.cached) == (7, 6)
    for r in (run, twin):
        assert {j["served_model"] for j in read_judgments(r, "gpt-3.5-turbo").values()} == {"snapshot-2"}


def _legacy_run(tmp_path: Path, url: str):
    """A run judged before the endpoint was part of the key: format-1 keys, no served_model, no replies list."""
    run = make_run(tmp_path / "legacy", ANSWERS)
    folder = run.judge_dir("gpt-3.5-turbo")
    folder.mkdir(parents=True)
    (folder / "judge.json").write_text(json.dumps({"judge_model": "gpt-3.5-turbo", "base_url": url,
                                                   "prompt_version": PROMPT_VERSION}))
    lines = []
    for p in run.predictions().values():
        key = legacy_key("gpt-3.5-turbo", PROMPT_VERSION, p["question"], p["answer"], p["pred"])
        lines.append({"id": p["id"], "key": key, "pred": "yes", "score": 4.0, "reply": "{'pred': 'yes', 'score': 4}",
                      "valid": True, "error": None, "attempts": 1, "cached": False})
    (folder / "judgments.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def test_old_judgments_stay_readable_and_are_reused_by_the_same_endpoint(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        run = _legacy_run(tmp_path, server.url)
        metrics = build_report([run.path]).results[0].metrics
        assert (metrics.judged, metrics.yes, metrics.score) == (6, 6, 4.0)
        assert build_report([run.path], mode="compat").results[0].metrics.score == 4  # compat reads their reply
        summary, = _judge([run], server, tmp_path / "cache")
        assert (summary.cached, len(server.calls)) == (6, 0)
    assert build_report([run.path]).results[0].metrics.judged == 6  # still counted after the rewrite


def test_old_judgments_from_another_endpoint_and_old_cache_files_are_not_used(tmp_path: Path) -> None:
    run = _legacy_run(tmp_path, "http://elsewhere.example:8000/v1")
    old_cache = tmp_path / "cache"
    for p in run.predictions().values():  # a format-1 shared cache holding these items
        key = legacy_key("gpt-3.5-turbo", PROMPT_VERSION, p["question"], p["answer"], p["pred"])
        (old_cache / key[:2]).mkdir(parents=True, exist_ok=True)
        (old_cache / key[:2] / f"{key}.json").write_text(json.dumps({"id": p["id"], "key": key, "valid": True}))
    with FakeOpenAI() as server:
        summary, = _judge([run], server, old_cache)
        assert (summary.cached, summary.judged, len(server.calls)) == (0, 6, 6)
