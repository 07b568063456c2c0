"""Endpoints that misbehave: a 200 that is not OpenAI JSON (a proxy's HTML page, a text page, broken JSON), one
that never answers (called dead within a bounded time), and slow but live ones (waited for)."""

from __future__ import annotations

import pytest
from eval_helpers import make_run
from fake_openai_server import FakeOpenAI, Raw, Reply, Sleep

from fastervlm.cli import main
from fastervlm.eval.judge import JudgeSettings, JudgeUnavailable, judge_runs, read_judgments
from fastervlm.eval.judge_client import EndpointWatch

KEY = "sk-test-endpoint"
ANSWERS = {f"q{i}": (f"answer{i}", f"it is answer{i}") for i in range(6)}
NOT_OPENAI = {
    "nginx page": Raw("<html><head><title>Welcome to nginx!</title></head><body>...</body></html>"),
    "proxy login (text/plain)": Raw("Please log in to continue.", "text/plain"),
    "broken JSON": Raw("{'choices': oops", "application/json"),
    "JSON without choices": Raw('{"hello": "world"}', "application/json"),
}


def _settings(server: FakeOpenAI, tmp_path, **kw) -> JudgeSettings:
    kw.setdefault("cache_dir", tmp_path / "cache")
    return JudgeSettings(base_url=server.url, backoff=0.001, max_backoff=0.01, **kw)


def _judge(runs, settings):
    return judge_runs(runs, settings, api_key=KEY, progress=False, report=lambda _: None)


@pytest.mark.parametrize("page", list(NOT_OPENAI))
def test_a_page_that_is_not_openai_json_is_a_failed_attempt_and_retried(tmp_path, page: str) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI({"in q0?": [NOT_OPENAI[page]] * 2}) as server:
        summary, = _judge([run], _settings(server, tmp_path))
    assert (summary.judged, summary.failed) == (6, 0)
    assert read_judgments(run, "gpt-3.5-turbo")["q0"]["attempts"] == 3


@pytest.mark.parametrize("page", list(NOT_OPENAI))
def test_an_endpoint_that_keeps_answering_pages_stops_with_the_fix_and_keeps_what_was_judged(tmp_path, page: str) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    faults = {f"in q{i}?": [NOT_OPENAI[page]] * 10 for i in (3, 4, 5)}  # the proxy steps in after three items
    with FakeOpenAI(faults) as server:
        with pytest.raises(JudgeUnavailable) as err:
            _judge([run], _settings(server, tmp_path, concurrency=1, max_attempts=2))
        url = server.url
    message = str(err.value)
    assert f"the endpoint at {url} did not return OpenAI-style JSON" in message
    assert "check OPENAI_BASE_URL" in message and "3 items in a row" in message
    judgments = read_judgments(run, "gpt-3.5-turbo")
    assert [i for i, j in judgments.items() if j["valid"]] == ["q0", "q1", "q2"]  # kept, and cached
    assert all("did not return OpenAI-style JSON" in judgments[f"q{i}"]["error"] for i in (3, 4, 5))


def test_the_cli_says_it_in_one_line_without_a_traceback(tmp_path, monkeypatch, capsys) -> None:
    make_run(tmp_path / "runs" / "run", ANSWERS)
    with FakeOpenAI({"in q": [NOT_OPENAI["nginx page"]] * 100}) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        code = main(["eval", "judge", str(tmp_path / "runs"), "--judge-cache", str(tmp_path / "cache"), "--no-progress",
                     "--max-attempts", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "AttributeError" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("fastervlm: error:")]
    assert len(error_lines) == 1 and "did not return OpenAI-style JSON" in error_lines[0]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_endpoint_watch_trips_only_on_silence_with_two_failures_in_a_row() -> None:
    clock = _Clock()
    watch = EndpointWatch(dead_after=60.0, clock=clock)
    watch.request()
    clock.now += 61
    assert watch.no_answer() is None  # one failure is not enough (a single slow request timing out)
    assert watch.no_answer() == (2, 61.0)
    watch.answered()  # any answer, even an error status, means the server is alive
    clock.now += 30
    assert watch.no_answer() is None and watch.no_answer() is None  # two failures, but only 30 s of silence
    clock.now += 30
    assert watch.no_answer() == (3, 60.0)


def test_an_endpoint_that_never_answers_is_called_dead_after_dead_after_not_after_every_attempt(tmp_path) -> None:
    """Every request hangs past the timeout. Without the breaker, 3 items x 5 attempts would time out one after
    another (~15 requests); the breaker stops once two requests in a row failed and 0.5 s passed without an answer."""
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI({"in q": [Sleep(5.0)] * 100}) as server:
        with pytest.raises(JudgeUnavailable) as err:
            _judge([run], _settings(server, tmp_path, timeout=0.2, dead_after=0.5, concurrency=2))
        calls = len(server.calls)
    assert "has answered nothing for" in str(err.value) and "--dead-after" in str(err.value)
    assert "requests in a row could not connect or timed out" in str(err.value)
    assert calls <= 8, calls
    assert not any(j["valid"] for j in read_judgments(run, "gpt-3.5-turbo").values())


def test_a_slow_but_live_server_is_waited_for(tmp_path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    slow = {f"in q{i}?": [Sleep(0.3)] for i in range(6)}  # every reply takes longer than dead_after, within timeout
    with FakeOpenAI(slow) as server:
        summary, = _judge([run], _settings(server, tmp_path, timeout=3.0, dead_after=0.1, concurrency=2))
    assert (summary.judged, summary.failed) == (6, 0)


def test_a_live_server_with_a_timed_out_request_is_not_called_dead(tmp_path) -> None:
    run = make_run(tmp_path / "run", ANSWERS)
    with FakeOpenAI({"in q0?": [Sleep(1.5)], "in q1?": [Reply("{'pred': 'no', 'score': 0}")]}) as server:
        summary, = _judge([run], _settings(server, tmp_path, timeout=0.3, dead_after=0.2, concurrency=1))
    assert (summary.judged, summary.failed) == (6, 0)
    assert read_judgments(run, "gpt-3.5-turbo")["q0"]["attempts"] == 2


def test_dead_after_must_be_positive() -> None:
    from fastervlm.errors import FasterVLMError

    with pytest.raises(FasterVLMError, match="dead_after"):
        JudgeSettings(dead_after=0)
