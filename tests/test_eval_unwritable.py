"""Folders the evaluation cannot write: a new run under a read-only --out, a read-only run resumed, a read-only
run judged, a report into a read-only folder. Each is one line that names the folder and the fix (exit 2), and
nothing that is already there is written again.

Tests run as root here, and root ignores permission bits: `unwritable(..., "real")` makes the folder immutable
with chattr +i (the kernel refuses, EPERM) or, as another user, read-only with chmod; `"simulated"` makes the os/io
calls under the folder fail with EROFS, as a read-only mount would (tests cannot mount one). Each test runs both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import FakeGeneration, FakePipeline, unwritable, write_benchmark

from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.predict import predict_items, prepare_run
from fastervlm.eval.storage import NotWritableError

IDS = [f"q{i}" for i in range(4)]
HOW = ["real", "simulated"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _predict(tmp_path: Path, out: Path):
    pipe = FakePipeline(tmp_path)
    pruner = pipe.pruner("none")
    loaded = load_items(BENCHMARKS["msvd"], tmp_path / "data")
    run = prepare_run(pipe, loaded, tmp_path / "data", pruner, FakeGeneration(), out=out)
    return run, predict_items(pipe, run, loaded, tmp_path / "data", pruner, FakeGeneration(), progress=False)


@pytest.mark.parametrize("how", HOW)
def test_a_new_run_under_a_read_only_out_names_the_folder(tmp_path: Path, how: str) -> None:
    write_benchmark(tmp_path / "data", IDS)
    out = tmp_path / "runs"
    out.mkdir()
    with unwritable(out, how) as what, pytest.raises(NotWritableError) as err:
        _predict(tmp_path, out)
    message = str(err.value)
    assert message.startswith(f"cannot write in {out / 'fake-model' / 'msvd' / 'none'} ("), what
    assert "choose a writable --out" in message and "\n" not in message
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("how", HOW)
def test_a_finished_read_only_run_resumes_without_writing(tmp_path: Path, how: str) -> None:
    write_benchmark(tmp_path / "data", IDS)
    run, _ = _predict(tmp_path, tmp_path / "runs")
    before = _tree(run.path)
    with unwritable(run.path, how) as what:
        _, summary = _predict(tmp_path, tmp_path / "runs")
    assert (summary.skipped, summary.done) == (4, 0), what
    assert _tree(run.path) == before  # no temporary items.json, nothing rewritten


@pytest.mark.parametrize("how", HOW)
def test_a_read_only_run_with_work_left_names_the_folder_and_the_fix(tmp_path: Path, how: str) -> None:
    write_benchmark(tmp_path / "data", IDS, missing=("q2",))
    run, _ = _predict(tmp_path, tmp_path / "runs")
    (tmp_path / "data" / "MSVD_Zero_Shot_QA" / "videos" / "vid_q2.mp4").write_bytes(b"ok")
    with unwritable(run.path, how) as what, pytest.raises(NotWritableError) as err:
        _predict(tmp_path, tmp_path / "runs")
    assert str(err.value).startswith(f"cannot write in {run.path / 'predictions'} ("), what
    assert f"make {run.path} writable" in str(err.value)
