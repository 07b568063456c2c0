"""The batch size is part of a run: greedy answers can differ with it (docs/evaluation.md, "What batching changes"),
so config.json records it, a resumed run keeps it, another one is refused, and `eval compare` says when two runs
differ in nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import FakeGeneration, FakePipeline, write_benchmark

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.compare import batch_size_only
from fastervlm.eval.predict import predict_items, prepare_run

IDS = [f"q{i}" for i in range(6)]


def _predict(tmp_path: Path, pipe: FakePipeline, batch_size: int | None, *, limit: int | None = None,
             tag: str | None = None, method: str = "none"):
    loaded = load_items(BENCHMARKS["msvd"], tmp_path / "data", limit)
    pruner = pipe.pruner(method)
    run = prepare_run(pipe, loaded, tmp_path / "data", pruner, FakeGeneration(), out=tmp_path / "runs", tag=tag)
    predict_items(pipe, run, loaded, tmp_path / "data", pruner, FakeGeneration(), batch_size=batch_size, progress=False)
    return run


def test_a_run_records_its_batch_size_and_a_resumed_one_keeps_it(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS)
    pipe = FakePipeline(tmp_path)
    run = _predict(tmp_path, pipe, 2, limit=2)
    assert run.config()["batch_size"] == 2
    pipe.batches.clear()
    _predict(tmp_path, pipe, None)  # grown to 6 items, without --batch-size: its own 2, not the CPU default 4
    assert pipe.batches == [2, 2] and run.config()["batch_size"] == 2


def test_the_default_is_recorded_too(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS)
    run = _predict(tmp_path, FakePipeline(tmp_path), None)
    assert run.config()["batch_size"] == 8  # grouped.default_batch_size on the CPU in fp32


def test_another_batch_size_is_refused(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS, missing=("q5",))
    pipe = FakePipeline(tmp_path)
    run = _predict(tmp_path, pipe, 2)
    (tmp_path / "data" / "MSVD_Zero_Shot_QA" / "videos" / "vid_q5.mp4").write_bytes(b"ok")
    with pytest.raises(FasterVLMError, match=r"was predicted with 2 items per generate call and this command asks "
                                             r"for 4: .*Leave out --batch-size \(or pass --batch-size 2\)"):
        _predict(tmp_path, pipe, 4)
    assert "q5" not in run.finished_ids()


def test_a_run_recorded_before_batch_sizes_resumes_as_it_is(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS, missing=("q5",))
    pipe = FakePipeline(tmp_path)
    run = _predict(tmp_path, pipe, 2)
    config = run.config()
    del config["batch_size"]
    run.config_file.write_text(json.dumps(config))
    (tmp_path / "data" / "MSVD_Zero_Shot_QA" / "videos" / "vid_q5.mp4").write_bytes(b"ok")
    _predict(tmp_path, pipe, 3)
    assert "q5" in run.finished_ids() and "batch_size" not in run.config()


def test_compare_says_when_two_runs_differ_only_in_batch_size(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS)
    pipe = FakePipeline(tmp_path)
    one, four = _predict(tmp_path, pipe, 1, tag="b1"), _predict(tmp_path, pipe, 4, tag="b4")
    note = batch_size_only(one.path, four.path)
    assert note is not None and "differ only in their batch size (1 and 4 items per generate call)" in note
    assert batch_size_only(one.path, one.path) is None  # the same configuration
    other = _predict(tmp_path, pipe, 4, method="fastervlm")  # another method: a real difference
    assert batch_size_only(four.path, other.path) is None


def test_the_compare_command_prints_the_note(tmp_path: Path, monkeypatch, capsys) -> None:
    from fake_openai_server import FakeOpenAI

    from fastervlm.cli import main

    write_benchmark(tmp_path / "data", IDS)
    pipe = FakePipeline(tmp_path)
    one, four = _predict(tmp_path, pipe, 1, tag="b1"), _predict(tmp_path, pipe, 4, tag="b4")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch-size")
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        assert main(["eval", "judge", str(tmp_path / "runs"), "--no-progress", "--cache-dir", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(one.path), str(four.path)]) == 0
    assert "note: the two runs differ only in their batch size (1 and 4" in capsys.readouterr().out
