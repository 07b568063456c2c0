"""predict without a model: records, error items, resume, kill -9, shards, configuration refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_helpers import FakeGeneration, FakePipeline, write_benchmark

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.predict import Rank, predict_items, prepare_run
from fastervlm.eval.rundir import RunDir, read_jsonl, run_name, variant_name

IDS = [f"q{i}" for i in range(7)]
TESTS = Path(__file__).parent


def _run(tmp_path: Path, pipeline: FakePipeline, *, rank: Rank | None = None, prefetch: int = 2, **pruner):
    loaded = load_items(BENCHMARKS["msvd"], tmp_path / "data")
    p = pipeline.pruner("fastervlm" if pruner else "none", **pruner)
    run = prepare_run(pipeline, loaded, tmp_path / "data", p, FakeGeneration(), out=tmp_path / "runs")
    return run, predict_items(pipeline, run, loaded, tmp_path / "data", p, FakeGeneration(), rank=rank,
                              prefetch=prefetch, progress=False)


def test_every_item_gets_a_record_and_bad_videos_become_error_items(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS, missing=("q2",), bad=("q5",))
    run, summary = _run(tmp_path, FakePipeline(tmp_path), reduction=0.9)
    assert run.path == tmp_path / "runs" / "fake-model" / "msvd" / "fastervlm_r0.9"
    assert (summary.done, summary.errors, summary.skipped, summary.expected) == (5, 2, 0, 7)
    merged = run.predictions()
    assert list(merged) == IDS
    good = merged["q0"]
    assert good["pred"] == "what happens in q0? -> vid_q0" and good["answer"] == "answer q0"
    assert (good["visual_tokens"], good["output_tokens"], good["video_file"]) == (4, 3, "vid_q0.mp4")
    assert good["method"] == {"method": "fastervlm", "keep": None, "reduction": 0.9}
    assert "no video vid_q2.* in" in merged["q2"]["error"] and merged["q2"]["pred"] is None
    assert "cannot decode" in merged["q5"]["error"]
    config = run.config()
    assert config["benchmark"]["items"] == 7 and config["generation"] == {"max_new_tokens": 8}
    assert [i["id"] for i in run.items()] == IDS


def test_resume_skips_finished_items_and_retries_errors(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS, missing=("q2",))
    first = FakePipeline(tmp_path)
    run, _ = _run(tmp_path, first)
    (tmp_path / "data" / "MSVD_Zero_Shot_QA" / "videos" / "vid_q2.mp4").write_bytes(b"ok")  # the user fixes it
    again = FakePipeline(tmp_path)
    run, summary = _run(tmp_path, again)
    assert again.answered == ["what happens in q2?"]
    assert (summary.skipped, summary.done, summary.merged_errors, summary.merged_predictions) == (6, 1, 0, 7)
    lines = [r["id"] for r in read_jsonl(run.prediction_file(0))]
    assert sorted(set(lines)) == IDS and lines.count("q2") == 2  # the error line stays, the success wins
    third = FakePipeline(tmp_path)
    _run(tmp_path, third)
    assert third.answered == []


def test_another_configuration_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS)
    loaded = load_items(BENCHMARKS["msvd"], tmp_path / "data")
    pipe = FakePipeline(tmp_path)
    prepare_run(pipe, loaded, tmp_path / "data", pipe.pruner("fastervlm", reduction=0.9), FakeGeneration(), run_dir=tmp_path / "r")
    with pytest.raises(FasterVLMError, match=r"(?s)method.reduction: 0.9 in the run directory, 0.95 now"):
        prepare_run(pipe, loaded, tmp_path / "data", pipe.pruner("fastervlm", reduction=0.95), FakeGeneration(), run_dir=tmp_path / "r")
    limited = load_items(BENCHMARKS["msvd"], tmp_path / "data", limit=3)
    with pytest.raises(FasterVLMError, match="holds a run of 7 items and this command asks for its first 3: a run is "
                       "never shrunk. Resume it with --limit 7"):
        prepare_run(pipe, limited, tmp_path / "data", pipe.pruner("fastervlm", reduction=0.9), FakeGeneration(), run_dir=tmp_path / "r")


class _Shard(Rank):
    """A rank of a 2-process run played in one process (the torchrun test runs real processes)."""

    def barrier(self) -> None:
        pass


def _comparable(run: RunDir, root: Path) -> dict:
    """Records without rank and timings, with the data folder's path (in error messages) made relative."""
    text = json.dumps({i: {k: v for k, v in r.items() if k not in ("rank", "timings")} for i, r in run.predictions().items()})
    return json.loads(text.replace(str(root), "<root>"))


def test_shards_are_disjoint_and_merge_to_the_single_process_result(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "one" / "data", IDS, bad=("q3",))
    write_benchmark(tmp_path / "two" / "data", IDS, bad=("q3",))
    single, _ = _run(tmp_path / "one", FakePipeline(tmp_path / "one"), reduction=0.5)
    pipes = [FakePipeline(tmp_path / "two") for _ in range(2)]
    runs = [_run(tmp_path / "two", pipes[r], rank=_Shard(r, 2), reduction=0.5)[0] for r in range(2)]
    assert pipes[0].answered and pipes[1].answered
    assert not set(pipes[0].answered) & set(pipes[1].answered)
    assert [p.name for p in runs[0].prediction_files()] == ["rank-00000.jsonl", "rank-00001.jsonl"]
    assert _comparable(runs[0], tmp_path / "two") == _comparable(single, tmp_path / "one")


def test_prefetch_depth_does_not_change_results(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "a" / "data", IDS, missing=("q1",), bad=("q4",))
    write_benchmark(tmp_path / "b" / "data", IDS, missing=("q1",), bad=("q4",))
    ahead, _ = _run(tmp_path / "a", FakePipeline(tmp_path / "a"), prefetch=3)
    inline, _ = _run(tmp_path / "b", FakePipeline(tmp_path / "b"), prefetch=0)
    assert _comparable(ahead, tmp_path / "a") == _comparable(inline, tmp_path / "b")
    assert sorted(r["id"] for r in read_jsonl(ahead.prediction_file(0))) == sorted(IDS)  # each written once


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from eval_helpers import FakeGeneration, FakePipeline
from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.predict import predict_items, prepare_run
root = Path({root!r})
pipe = FakePipeline(root, delay={delay})
loaded = load_items(BENCHMARKS["msvd"], root / "data")
pruner = pipe.pruner("none")
run = prepare_run(pipe, loaded, root / "data", pruner, FakeGeneration(), out=root / "runs")
predict_items(pipe, run, loaded, root / "data", pruner, FakeGeneration(), batch_size={batch}, progress=False)
"""


def test_a_killed_run_resumes_without_losing_or_duplicating_items(tmp_path: Path) -> None:
    ids = [f"q{i}" for i in range(30)]
    write_benchmark(tmp_path / "data", ids)
    script = KILL_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), delay=0.15, batch=1)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = tmp_path / "runs" / "fake-model" / "msvd" / "none" / "predictions" / "rank-00000.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.is_file() or out.read_text().count("\n") < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = [r["id"] for r in read_jsonl(out)]
    assert 4 <= len(written) < len(ids), "the kill should land mid-run"
    with open(out, "a") as f:
        f.write('{"id": "q29", "question": "torn')  # as if the kill had hit mid-line
    pipe = FakePipeline(tmp_path)
    run, summary = _run(tmp_path, pipe)
    assert summary.skipped == len(written)
    assert sorted(pipe.answered) == sorted(f"what happens in {i}?" for i in ids if i not in written)
    lines = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(lines) == sorted(ids)  # every item exactly once


def test_run_names_and_variants() -> None:
    assert run_name({"method": "none", "keep": None, "reduction": None}) == "none"
    assert run_name({"method": "fastervlm", "keep": None, "reduction": 0.9, "global_budget": False}) == "fastervlm_r0.9"
    settings = {"method": "fastervlm", "keep": 26, "reduction": None, "global_budget": True}
    assert run_name(settings, "fp16") == "fastervlm_global_budget_k26_fp16"
    assert variant_name(settings, "fp16") == "fastervlm_global_budget_fp16"
    assert variant_name({"method": "fastv", "keep": None, "reduction": 0.5, "layer": 2}) == "fastv_layer2"


def test_a_larger_limit_grows_the_run_and_keeps_what_was_predicted(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "data", IDS)
    pipe = FakePipeline(tmp_path)
    pruner = pipe.pruner("none")
    first = load_items(BENCHMARKS["msvd"], tmp_path / "data", limit=3)
    run = prepare_run(pipe, first, tmp_path / "data", pruner, FakeGeneration(), out=tmp_path / "runs")
    predict_items(pipe, run, first, tmp_path / "data", pruner, FakeGeneration(), progress=False)
    assert run.config()["benchmark"]["items"] == 3
    created = run.config()["provenance"]["created"]

    grown = load_items(BENCHMARKS["msvd"], tmp_path / "data", limit=6)
    again = FakePipeline(tmp_path)
    run = prepare_run(again, grown, tmp_path / "data", pruner, FakeGeneration(), out=tmp_path / "runs")
    summary = predict_items(again, run, grown, tmp_path / "data", pruner, FakeGeneration(), progress=False)
    assert again.answered == [f"what happens in {i}?" for i in IDS[3:6]]  # only the new items
    assert (summary.skipped, summary.done, summary.expected, summary.merged_predictions) == (3, 3, 6, 6)
    config = run.config()
    assert (config["benchmark"]["items"], config["benchmark"]["items_sha256"]) == (6, grown.files["items_sha256"])
    assert config["provenance"]["created"] == created  # the run's origin stays
    assert [i["id"] for i in run.items()] == IDS[:6]
    # Growing again with nothing new (the same limit) writes nothing and answers nothing.
    third = FakePipeline(tmp_path)
    run = prepare_run(third, grown, tmp_path / "data", pruner, FakeGeneration(), out=tmp_path / "runs")
    assert predict_items(third, run, grown, tmp_path / "data", pruner, FakeGeneration(), progress=False).skipped == 6


def test_other_items_are_refused_with_the_first_difference(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "a", IDS)
    write_benchmark(tmp_path / "b", ["q0", "q1", "x2", "q3"])
    pipe = FakePipeline(tmp_path)
    pruner = pipe.pruner("none")
    prepare_run(pipe, load_items(BENCHMARKS["msvd"], tmp_path / "a", limit=3), tmp_path / "a", pruner, FakeGeneration(),
                run_dir=tmp_path / "r")
    with pytest.raises(FasterVLMError, match="holds other benchmark items: item 3 is id 'q2' in the run directory, "
                       "id 'x2' now"):
        prepare_run(pipe, load_items(BENCHMARKS["msvd"], tmp_path / "b"), tmp_path / "b", pruner, FakeGeneration(),
                    run_dir=tmp_path / "r")
