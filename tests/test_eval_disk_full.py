"""The disk filling up in the middle of a run: `eval predict` and `eval judge` stop with the one line that names the
folder and the fix (exit 2, no traceback), keep every record written before, and leave no half-written batch; the
same command resumes once there is space.

The full disk is simulated: os.write raises OSError(ENOSPC) for files under the run folder once a number of writes
went through (the writers write unbuffered, so this is where the kernel would refuse). A buffered writer used to
fail twice here: on the write, and again when closing flushed the same bytes, which printed a traceback.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from eval_helpers import FakePipeline, make_run, write_benchmark

from fastervlm.cli import main

IDS = [f"q{i}" for i in range(6)]


@contextmanager
def full_disk(under: Path, after: int) -> Iterator[list[str]]:
    """Writes to files under `under` fail with ENOSPC once `after` of them went through; yields the refused files."""
    real, written, refused = os.write, [0], []

    def write(fd: int, data: bytes) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).is_relative_to(under):
            if written[0] >= after:
                refused.append(target)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += 1
        return real(fd, data)

    with mock.patch.object(os, "write", write):
        yield refused


def _predict(tmp_path: Path, monkeypatch, pipeline: FakePipeline) -> int:
    import fastervlm.cli.answer  # noqa: F401  (commands that bind load_model on import take the real one)
    import fastervlm.cli.common
    import fastervlm.cli.show  # noqa: F401
    import fastervlm.cli.web  # noqa: F401

    monkeypatch.setattr(fastervlm.cli.common, "load_model", lambda args: pipeline)
    return main(["eval", "predict", "--benchmarks", "msvd", "--data-root", str(tmp_path / "data"), "--model", "fake",
                 "--out", str(tmp_path / "runs"), "--batch-size", "2", "--frame-cache", "off", "--no-progress"])


def _lines(file: Path) -> list[dict]:
    data = file.read_bytes()
    assert data.endswith(b"\n"), "a torn line was left behind"
    return [json.loads(line) for line in data.splitlines()]


def test_predict_stops_in_one_line_and_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    write_benchmark(tmp_path / "data", IDS)
    pipeline = FakePipeline(tmp_path)
    predictions = tmp_path / "runs" / "fake-model" / "msvd" / "none" / "predictions"
    capsys.readouterr()
    with full_disk(predictions, after=1) as refused:  # the first batch is written, the second is refused
        code = _predict(tmp_path, monkeypatch, pipeline)
    err = capsys.readouterr().err
    assert refused and code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        f"fastervlm: error: cannot write in {predictions} (no space left on the device): make {predictions.parent} "
        "writable (or free some space) to resume it, or copy it to a writable folder."]
    assert [r["id"] for r in _lines(predictions / "rank-00000.jsonl")] == IDS[:2]  # the refused batch left nothing
    assert _predict(tmp_path, monkeypatch, pipeline) == 0
    assert sorted(r["id"] for r in _lines(predictions / "rank-00000.jsonl")) == IDS  # each once
    assert pipeline.answered.count("what happens in q0?") == 1


def test_judge_stops_in_one_line_and_keeps_what_was_paid_for(tmp_path: Path, monkeypatch, capsys) -> None:
    from fake_openai_server import FakeOpenAI

    run = make_run(tmp_path / "runs" / "run", {i: ("a", "a") for i in IDS})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-disk-full")
    judge = ["eval", "judge", str(run.path), "--no-progress", "--concurrency", "1", "--cache-dir", str(tmp_path / "cache")]
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        with full_disk(run.judge_dir("gpt-3.5-turbo"), after=3) as refused:  # judge.json, then two judgments
            code = main(judge)
        err = capsys.readouterr().err
        assert refused and code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith(f"fastervlm: error: cannot write in {run.judge_dir('gpt-3.5-turbo')} "
                                                       "(no space left on the device)")
        paid = len(server.calls)
        assert main(judge) == 0
        assert len(server.calls) == len(IDS)  # what was judged before the disk filled came from the cache
        assert paid >= 1
