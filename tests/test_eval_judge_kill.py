"""A judge run stopped mid-way (a cluster scheduler's SIGTERM, or kill -9) and run again pays for nothing twice:
every judgment whose answer reached the client is found by the rerun, which knows its key before it asks (the
endpoint, the requested model, the prompt and the item; not the model name the server reports, which a killed run
never got to remember). Counted on the fake server: how many requests each item caused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from eval_helpers import make_run
from fake_openai_server import FakeOpenAI, Hold

import fastervlm
from fastervlm.cli import main
from fastervlm.eval.judge import read_judgments

ITEMS = {f"q{i}": (f"answer{i}", f"it is answer{i}") for i in range(6)}
HELD = ("q3", "q4", "q5")
"""Their first requests stay in flight until the judge is stopped."""


def _asked(server: FakeOpenAI) -> Counter:
    """Requests per item id (the user message names the item's question, 'what is in qN?')."""
    found = Counter()
    for call in server.calls:
        text = next(m["content"] for m in call["body"]["messages"] if m["role"] == "user")
        found.update(item for item in ITEMS if f"what is in {item}?" in text)
    return found


def _wait_for(condition, what: str, seconds: float = 120.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill -9"])
def test_a_judge_stopped_mid_run_pays_for_nothing_twice(tmp_path: Path, monkeypatch, stop: signal.Signals) -> None:
    run = make_run(tmp_path / "runs" / "run", ITEMS)
    cache = tmp_path / "cache"
    argv = ["eval", "judge", str(run.path), "--cache-dir", str(cache), "--concurrency", "8", "--no-progress"]
    faults = {f"what is in {item}?": [Hold()] for item in HELD}
    with FakeOpenAI(faults=faults) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-test-kill",
               "PYTHONPATH": str(Path(fastervlm.__file__).parents[1])}
        judge = subprocess.Popen([sys.executable, "-m", "fastervlm", *argv], env=env, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: len(server.calls) == len(ITEMS) and len(list(cache.glob("??/*.json"))) == 3,
                      "three judgments cached and three requests held")
            judge.send_signal(stop)
            server.release.set()  # the held requests are answered now: to a stopping process, or to nobody
            code = judge.wait(timeout=120)
        finally:
            judge.kill()
        first = _asked(server)
        assert first == Counter(list(ITEMS)), first  # one request per item so far
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-kill")
        assert main(argv) == 0  # the rerun
        asked = _asked(server)
    if stop == signal.SIGTERM:  # stopped as Ctrl-C would: the requests in flight finished into the cache
        assert code == 130 and "interrupted; work already written is kept" in judge.stderr.read()
        assert asked == Counter(list(ITEMS)), asked
    else:  # the held answers went to a dead process: only they are asked again
        assert code == -signal.SIGKILL
        assert asked == Counter({item: 2 if item in HELD else 1 for item in ITEMS}), asked
    judgments = read_judgments(run, "gpt-3.5-turbo")
    assert sorted(judgments) == sorted(ITEMS) and all(j["valid"] for j in judgments.values())
