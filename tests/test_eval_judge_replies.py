"""The judge's stop rule applies to every kind of empty answer, and hiding the API key never garbles a message.

- "3 items in a row failing every attempt" stop the command: a server that answers every request with an empty
  `choices` list, a null content or an empty one fails every attempt too (it used to count as a reply, so the
  streak never grew and every item spent all its attempts).
- A key of at least SECRET_MIN_LENGTH characters is hidden wherever it appears; a shorter one (a placeholder for a
  local server) is never searched for, so a key "a" leaves every message readable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import make_run
from fake_openai_server import EchoAuth, FakeOpenAI, Raw, Reply, Status

from fastervlm.eval.judge import JudgeSettings, JudgeUnavailable, judge_runs, read_judgments
from fastervlm.eval.judge_client import SECRET_MIN_LENGTH

ITEMS = {f"q{i}": (f"answer{i}", f"it is answer{i}") for i in range(12)}
EMPTY_CHOICES = Raw(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                                "choices": []}), "application/json")


def _judge(server: FakeOpenAI, tmp_path: Path, key: str = "sk-test-replies", **settings):
    run = make_run(tmp_path / "run", ITEMS)
    options = {"base_url": server.url, "cache_dir": tmp_path / "cache", "backoff": 0.001, "concurrency": 1, **settings}
    return run, lambda: judge_runs([run], JudgeSettings(**options), api_key=key, progress=False, report=lambda _: None)


@pytest.mark.parametrize("empty", [EMPTY_CHOICES, Reply(None), Reply(""), Reply("  \n")],
                         ids=["empty choices", "null content", "empty content", "blank content"])
def test_empty_answers_stop_the_command_after_three_items(tmp_path: Path, empty) -> None:
    with FakeOpenAI({"Correct Answer": [empty] * 100}) as server:
        run, judge = _judge(server, tmp_path, max_attempts=2)
        with pytest.raises(JudgeUnavailable, match=r"answered with no message .* for 3 items in a row and 2 attempts"):
            judge()
        assert 3 * 2 <= len(server.calls) <= 3 * 2 + 1  # plus the one request in flight then; not 12 x 2
    judgments = read_judgments(run, "gpt-3.5-turbo")
    assert len(judgments) >= 3 and all(not j["valid"] and "no message" in j["error"] for j in judgments.values())


def test_an_empty_answer_then_a_real_one_is_judged(tmp_path: Path) -> None:
    with FakeOpenAI({"in q0?": [EMPTY_CHOICES, Reply(None)]}) as server:
        run, judge = _judge(server, tmp_path, max_attempts=3)
        summary, = judge()
        assert (summary.judged, summary.failed, len(server.calls)) == (12, 0, 14)
    assert read_judgments(run, "gpt-3.5-turbo")["q0"]["attempts"] == 3


def test_a_one_letter_key_garbles_no_message(tmp_path: Path) -> None:
    """With a plain replace, "scripted failure" became "scripted f***ilure"."""
    with FakeOpenAI({"in q0?": [Status(500, message="scripted failure")] * 2,
                     "in q1?": [Raw("<html>a login page</html>")] * 2}) as server:
        run, judge = _judge(server, tmp_path, key="a", max_attempts=2, down_after=5)
        with pytest.raises(Exception, match="still unjudged"):
            judge()
    judgments = read_judgments(run, "gpt-3.5-turbo")
    assert "scripted failure" in judgments["q0"]["error"] and "***" not in judgments["q0"]["error"]
    assert "a login page" in judgments["q1"]["error"] and "***" not in judgments["q1"]["error"]
    assert judgments["q2"]["reply"] == "{'pred': 'yes', 'score': 5}"


def test_a_real_key_is_hidden_wherever_it_appears(tmp_path: Path) -> None:
    key = "sk-" + "k" * (SECRET_MIN_LENGTH - 3)
    with FakeOpenAI({"in q0?": [EchoAuth()] * 2}) as server:
        run, judge = _judge(server, tmp_path, key=key, max_attempts=2, down_after=5)
        with pytest.raises(Exception, match="still unjudged"):
            judge()
    error = read_judgments(run, "gpt-3.5-turbo")["q0"]["error"]
    assert "bad auth Bearer ***" in error and key not in error
