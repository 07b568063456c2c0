"""Folders the evaluation cannot write: a new run under a read-only --out, a read-only run resumed, a read-only
run judged, a report into a read-only folder. Each is one line that names the folder and the fix (exit 2), and
nothing that is already there is written again.

Tests run as root here, and root ignores permission bits: `unwritable(..., "real")` makes the folder immutable
with chattr +i (the kernel refuses, EPERM) or, as another user, read-only with chmod; `"simulated"` makes the os/io
calls under the folder fail with EROFS, as a read-only mount would (tests cannot mount one). Each test runs both.
"""

from __future__ import annotations

import re
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


def _judge_cli(paths: list[Path], server, tmp_path: Path, monkeypatch, *extra: str) -> int:
    from fastervlm.cli import main

    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return main(["eval", "judge", *map(str, paths), "--no-progress", *extra])


@pytest.mark.parametrize("how", HOW)
def test_judging_a_read_only_run_names_the_folder_before_any_call(tmp_path: Path, how: str, monkeypatch, capsys) -> None:
    from eval_helpers import make_run
    from fake_openai_server import FakeOpenAI

    run = make_run(tmp_path / "runs" / "run", {"q0": ("a", "a"), "q1": ("b", "c")})
    with FakeOpenAI() as server, unwritable(run.path, how) as what:
        code = _judge_cli([run.path], server, tmp_path, monkeypatch, "--judge-cache", str(tmp_path / "cache"))
        assert server.calls == [], what
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    expected = (f"fastervlm: error: cannot write in {run.judge_dir('gpt-3.5-turbo')} (REASON): make {run.path} "
                f"writable (chmod -R u+w {run.path}), or judge a writable copy of it.")
    assert re.fullmatch(re.escape(expected).replace("REASON", "[^()]+"), err.strip()), err


@pytest.mark.parametrize("how", HOW)
def test_a_read_only_judge_cache_is_named_before_any_call(tmp_path: Path, how: str, monkeypatch, capsys) -> None:
    from eval_helpers import make_run
    from fake_openai_server import FakeOpenAI

    run = make_run(tmp_path / "runs" / "run", {"q0": ("a", "a")})
    cache = tmp_path / "cache"
    cache.mkdir()
    with FakeOpenAI() as server, unwritable(cache, how) as what:
        code = _judge_cli([run.path], server, tmp_path, monkeypatch, "--judge-cache", str(cache))
        assert server.calls == [], what
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write in {cache} (" in err and "pass --judge-cache a writable folder" in err


@pytest.mark.parametrize("how", HOW)
def test_a_report_on_a_read_only_runs_folder_prints_the_table_and_offers_out(tmp_path: Path, how: str, capsys) -> None:
    from eval_helpers import make_run

    from fastervlm.cli import main

    runs = tmp_path / "runs"
    make_run(runs / "tiny/msvd/none", {"q0": ("a", "a"), "q1": ("b", "c")})
    with unwritable(runs, how) as what:
        code = main(["eval", "report", str(runs), "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 2, what
    assert "| tiny | none |" in out  # the table anyway
    assert err.startswith(f"fastervlm: error: cannot write in {runs} (") and err.count("\n") == 1
    assert "the table above is complete; pass --out a writable folder" in err
    assert not (runs / "report.md").exists()
    assert main(["eval", "report", str(runs), "--no-plot", "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()
