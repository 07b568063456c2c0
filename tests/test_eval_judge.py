"""The judge against a scripted local OpenAI-compatible server: faults, retries, caching, loud failures, secrecy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from eval_helpers import make_run
from fake_openai_server import EchoAuth, FakeOpenAI, Reply, Sleep, Status

from fastervlm.errors import FasterVLMError
from fastervlm.eval.judge import (
    PROMPT_VERSION,
    JudgeSettings,
    JudgeUnavailable,
    judge_messages,
    judge_runs,
    read_judgments,
)

GOLDEN = Path(__file__).parent / "data" / f"judge_request_{PROMPT_VERSION}.json"
KEY = "sk-test-SECRET-0123456789"
ANSWERS = {f"q{i}": (f"answer{i}", f"it is answer{i}" if i % 2 else "something else") for i in range(6)}


def _settings(server: FakeOpenAI, tmp_path: Path, **kw) -> JudgeSettings:
    kw.setdefault("cache_dir", tmp_path / "cache")
    return JudgeSettings(base_url=server.url, backoff=0.001, max_backoff=0.05, **kw)


def _judge(runs, settings, lines=None, **kw):
    return judge_runs(runs, settings, api_key=KEY, progress=False, report=(lines.append if lines is not None else lambda _: None), **kw)


def test_prompt_matches_the_golden_request() -> None:
    """The exact messages, frozen in tests/data (lmms-eval's prompt-stability habit): any change to the prompt
    text fails here; a deliberate change is a new prompt version with its own snapshot."""
    golden = json.loads(GOLDEN.read_text())
    assert golden["prompt_version"] == PROMPT_VERSION
    assert judge_messages(**golden["item"]) == golden["messages"]
    assert "is  a string" in golden["messages"][1]["content"] and "task:------##INSTRUCTIONS: " in golden["messages"][0]["content"]
    # braces in the item are not templates (the golden item holds "{answer}" and "{pred}")
    assert golden["messages"][1]["content"].count("{answer}") == 1 and "wings {pred}." in golden["messages"][1]["content"]
    with pytest.raises(FasterVLMError, match="unknown judge prompt version"):
        judge_messages("q", "a", "p", version="v0")


def test_the_request_on_the_wire_carries_the_golden_messages(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    item = golden["item"]
    run = make_run(tmp_path / "run", {"g0": (item["answer"], item["pred"])})
    items = json.loads((run.path / "items.json").read_text())
    items[0]["question"] = item["question"]
    (run.path / "items.json").write_text(json.dumps(items))
    record = json.loads(run.prediction_file(0).read_text())
    run.prediction_file(0).write_text(json.dumps({**record, "question": item["question"]}) + "\n")
    with FakeOpenAI() as server:
        _judge([run], _settings(server, tmp_path))
        body = server.calls[0]["body"]
    assert body["messages"] == golden["messages"]
    assert (body["model"], body["temperature"]) == ("gpt-3.5-turbo", 0.0)


@pytest.mark.shared_data("FASTERVLM_SHARED_SPEC")
def test_prompt_is_the_spec_text_verbatim() -> None:
    from conftest import shared_path

    text = shared_path("FASTERVLM_SHARED_SPEC").read_text()
    system = re.search(r"\nSystem:\n```\n(.*?)\n```", text, re.DOTALL).group(1).replace("\\n", "\n")
    user = re.search(r"\nUser:\n```\n(.*?)\n```", text, re.DOTALL).group(1).replace("\\n", "\n")
    golden = json.loads(GOLDEN.read_text())
    item = golden["item"]
    assert golden["messages"][0] == {"role": "system", "content": system}
    expected_user = re.sub(r"\{(question|answer|pred)\}", lambda m: item[m[1]], user)  # one pass: no re-templating
    assert golden["messages"][1] == {"role": "user", "content": expected_user}


def test_faults_are_retried_and_recorded(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    faults = {
        "in q0?": [Status(429, retry_after=0.01), Status(500), Status(503)],
        "in q1?": [Sleep(1.0)],  # longer than the client timeout
        "in q2?": [Reply("I think yes")],  # malformed
        "in q3?": [Reply("['yes', 4]"), Reply(None)],  # not a dict, then a null content
        "in q4?": [Reply("{'pred': 'yes', 'score': 4.8}")],  # a float score is kept exactly
        "in q5?": [Reply("```python\n{'pred': 'no', 'score': 0}\n```")],
    }
    with FakeOpenAI(faults) as server:
        summary, = _judge([run], _settings(server, tmp_path, timeout=0.3))
        calls, url = server.calls, server.url
    assert (summary.items, summary.judged, summary.failed, summary.cached) == (6, 6, 0, 0)
    assert summary.calls == len(calls) == 4 + 2 + 2 + 3 + 1 + 1
    judgments = read_judgments(run, "gpt-3.5-turbo")
    assert {i: j["attempts"] for i, j in judgments.items()} == {"q0": 4, "q1": 2, "q2": 2, "q3": 3, "q4": 1, "q5": 1}
    assert (judgments["q4"]["pred"], judgments["q4"]["score"]) == ("yes", 4.8)
    assert (judgments["q5"]["pred"], judgments["q5"]["score"]) == ("no", 0.0)
    assert judgments["q1"]["pred"] == "yes" and judgments["q0"]["pred"] == "no"  # the default judge after the faults
    body = calls[0]["body"]
    assert body["model"] == "gpt-3.5-turbo" and body["temperature"] == 0.0
    assert calls[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert summary.prompt_tokens == 100 * (summary.calls - 4)  # usage of the 9 answered calls (not 3 errors + 1 timeout)
    settings = json.loads((run.judge_dir("gpt-3.5-turbo") / "judge.json").read_text())
    assert settings["prompt_version"] == PROMPT_VERSION and settings["base_url"] == url


def test_an_unparsable_item_fails_after_max_attempts_with_its_raw_text(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI({"in q2?": [Reply("no idea")] * 10}) as server:
        lines: list[str] = []
        with pytest.raises(FasterVLMError, match="1 items are still unjudged"):
            _judge([run], _settings(server, tmp_path, max_attempts=3), lines)
        calls, port = len(server.calls), server.port
    assert calls == 5 + 3
    failed = read_judgments(run, "gpt-3.5-turbo")["q2"]
    assert (failed["valid"], failed["reply"], failed["attempts"]) == (False, "no idea", 3)
    assert failed["replies"] == ["no idea"] * 3
    assert "not a dict" in failed["error"]
    assert any("1 failed" in line for line in lines)
    # The failure is not cached: the next run asks again (and now gets an answer), at the same address.
    with FakeOpenAI(port=port) as server:
        summary, = _judge([run], _settings(server, tmp_path))
        assert (summary.cached, summary.judged, len(server.calls)) == (5, 1, 1)


def test_a_second_run_makes_no_calls(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI() as server:
        _judge([run], _settings(server, tmp_path))
        first = len(server.calls)
        again, = _judge([run], _settings(server, tmp_path))
        assert len(server.calls) == first == 6
        assert (again.cached, again.calls) == (6, 0)
        # Another run with the same questions, answers and predictions is served by the shared cache ...
        twin = make_run(tmp_path / "twin", ANSWERS, method={"method": "fastervlm", "reduction": 0.5})
        twin_summary, = _judge([twin], _settings(server, tmp_path))
        assert (twin_summary.cached, len(server.calls)) == (6, 6)
        # ... and the run's own judgments serve when the shared cache is gone (judging on another machine).
        own, = _judge([run], _settings(server, tmp_path, cache_dir=tmp_path / "empty-cache"))
        assert (own.cached, len(server.calls)) == (6, 6)
        # A changed prediction, or another judge model, is a new key.
        other, = _judge([run], _settings(server, tmp_path, model="judge-2"))
        assert (other.cached, other.judged, len(server.calls)) == (0, 6, 12)


def test_an_unreachable_judge_fails_loudly_and_quickly(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    server = FakeOpenAI().start()
    url = server.url
    server.stop()
    settings = JudgeSettings(base_url=url, cache_dir=tmp_path / "cache", backoff=0.001, max_backoff=0.01, concurrency=2)
    with pytest.raises(JudgeUnavailable, match=r"looks down.*up to 6 items of 1 run are unjudged"):
        _judge([run], settings)
    judgments = read_judgments(run, "gpt-3.5-turbo")
    assert not any(j["valid"] for j in judgments.values())  # nothing is recorded as judged (or as wrong)


def test_a_stop_ends_the_wait_between_attempts(tmp_path: Path) -> None:
    """A stopped run (the judge looks down, or Ctrl-C) does not sit out the workers' backoff before exiting."""
    import threading
    import time

    from fastervlm.eval.judge import Judge

    with FakeOpenAI({"in q0?": [Status(500)] * 5}) as server:
        judge = Judge(JudgeSettings(base_url=server.url, backoff=30.0, max_backoff=30.0, max_attempts=3), api_key=KEY)
        stop, outcomes = threading.Event(), []
        worker = threading.Thread(target=lambda: outcomes.append(judge.judge("what is in q0?", "a", "p", stop)))
        worker.start()
        deadline = time.monotonic() + 10
        while not server.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        worker.join(timeout=5)
    assert not worker.is_alive()
    assert outcomes[0].attempts == 1 and not outcomes[0].valid and outcomes[0].transport_failure


def test_a_refused_request_stops_at_once_without_the_key(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI({"in q": [Status(401, message=f"Incorrect API key provided: {KEY}")] * 100}) as server:
        with pytest.raises(JudgeUnavailable, match="refused the request") as err:
            _judge([run], _settings(server, tmp_path, concurrency=1))
        assert len(server.calls) == 1
    assert KEY not in str(err.value) and "***" in str(err.value)


def test_the_key_never_reaches_files_or_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI({"in q1?": [EchoAuth()] * 5}) as server:
        with pytest.raises(FasterVLMError) as err:
            judge_runs([run], _settings(server, tmp_path, max_attempts=2), api_key=KEY, progress=True)
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and KEY in p.read_text(errors="ignore")]
    assert leaked == []
    out = capsys.readouterr()
    assert KEY not in out.out + out.err + str(err.value)
    assert "***" in read_judgments(run, "gpt-3.5-turbo")["q1"]["error"]


def test_a_missing_key_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run = make_run(tmp_path / "run", ANSWERS)
    with pytest.raises(FasterVLMError, match="OPENAI_API_KEY"):
        judge_runs([run], JudgeSettings(cache_dir=tmp_path), progress=False)


def test_error_records_are_not_sent_to_the_judge(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", {"q0": ("a", "a"), "q1": ("b", None)})
    with FakeOpenAI() as server:
        summary, = _judge([run], _settings(server, tmp_path))
        assert (summary.items, len(server.calls)) == (1, 1)


@pytest.mark.parametrize("setting", [{"concurrency": 0}, {"max_attempts": 0}, {"down_after": 0}, {"timeout": 0.0}])
def test_judge_settings_out_of_range_are_refused(setting: dict) -> None:
    from fastervlm.errors import FasterVLMError
    from fastervlm.eval.judge import JudgeSettings

    with pytest.raises(FasterVLMError, match=next(iter(setting))):
        JudgeSettings(**setting)


def test_judge_names_the_path_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fastervlm.cli import main

    make_run(tmp_path / "runs/msvd/none", ANSWERS)
    for path, words in [(tmp_path / "nonexist", "(no such folder)"), (tmp_path / "runs/msvd/none/predictions", "")]:
        assert main(["eval", "judge", str(tmp_path / "runs"), str(path)]) == 2
        assert f"no run directories under {path}{' ' + words if words else ':'}" in capsys.readouterr().err
