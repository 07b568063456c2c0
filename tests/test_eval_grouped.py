"""The grouped, batched harness without a model (FakePipeline): each video decoded and encoded once per pass,
batches across videos, an item that fails alone does not sink its batch, shards by video, a sweep's cells in one
pass, and kill -9 mid-run with batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from eval_helpers import FakeGeneration, FakePipeline
from test_eval_predict import KILL_SCRIPT

from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.grouped import default_batch_size, group_by_video, shard_by_video
from fastervlm.eval.predict import predict_configurations, predict_items, prepare_run
from fastervlm.eval.rundir import read_jsonl

TESTS = Path(__file__).parent


def write_grouped_benchmark(data_root: Path, per_video: list[int], *, missing: tuple[int, ...] = (),
                            long: tuple[str, ...] = ()) -> list[str]:
    """MSVD files with per_video[v] questions on video v (interleaved, as real files are not sorted by video);
    returns the ids. Questions whose id is in `long` fail as too long."""
    root = data_root / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(max(per_video)):
        rows += [(v, n) for v, count in enumerate(per_video) if n < count]
    ids = [f"v{v}_{n}" for v, n in rows]
    qs = [{"video_name": f"vid{v}", "question_id": i,
           "question": f"what happens in {i}?" + (" too long" if i in long else "")} for (v, _), i in zip(rows, ids)]
    (root / "test_q_1k.json").write_text(json.dumps(qs))
    (root / "test_a_1k.json").write_text(json.dumps([{"answer": "a", "type": 3, "question_id": i} for i in ids]))
    for v in range(len(per_video)):
        if v not in missing:
            (root / "videos" / f"vid{v}.mp4").write_bytes(b"ok")
    return ids


def _predict(root: Path, pipe: FakePipeline, batch_size: int, **pruner):
    loaded = load_items(BENCHMARKS["msvd"], root / "data")
    p = pipe.pruner("fastervlm" if pruner else "none", **pruner)
    run = prepare_run(pipe, loaded, root / "data", p, FakeGeneration(), out=root / "runs")
    return run, predict_items(pipe, run, loaded, root / "data", p, FakeGeneration(), batch_size=batch_size,
                              progress=False)


def test_each_video_is_decoded_and_encoded_once_and_batches_span_videos(tmp_path: Path) -> None:
    ids = write_grouped_benchmark(tmp_path / "data", [5, 1, 3], missing=(1,))
    pipe = FakePipeline(tmp_path)
    run, summary = _predict(tmp_path, pipe, batch_size=3, reduction=0.5)
    assert sorted(pipe.decoded) == sorted(pipe.encoded) == ["vid0", "vid2"]  # once each, the missing one never
    assert [video for video, _ in pipe.prepared] == ["vid0", "vid2"]
    assert pipe.batches == [3, 3, 2]  # vid0's 5 questions and vid2's 3: batches of 3 across the two videos
    assert (summary.done, summary.errors, summary.tower_runs, summary.batches) == (8, 1, 2, 3)
    merged = run.predictions()
    assert list(merged) == ids
    assert merged["v0_4"]["pred"] == "what happens in v0_4? -> vid0"
    assert "no video vid1.*" in merged["v1_0"]["error"]
    assert merged["v0_0"]["tokens_per_frame"] == [2, 2] and merged["v0_0"]["llm_prefill_flops"] == 1000


def test_a_prompt_too_long_is_an_error_record_and_the_rest_of_its_batch_is_answered(tmp_path: Path) -> None:
    write_grouped_benchmark(tmp_path / "data", [4, 2], long=("v0_1", "v1_1"))
    pipe = FakePipeline(tmp_path)
    run, summary = _predict(tmp_path, pipe, batch_size=4)
    merged = run.predictions()
    assert [i for i, r in merged.items() if "error" in r] == ["v0_1", "v1_1"]
    assert "is too long" in merged["v0_1"]["error"]
    assert (summary.done, summary.errors) == (4, 2)
    assert sorted(pipe.answered) == sorted(f"what happens in {i}?" for i in ("v0_0", "v1_0", "v0_2", "v0_3"))


def test_results_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    records = []
    for batch in (1, 2, 5):
        write_grouped_benchmark(tmp_path / str(batch) / "data", [3, 2, 4], missing=(1,))
        run, _ = _predict(tmp_path / str(batch), FakePipeline(tmp_path / str(batch)), batch_size=batch)
        records.append({i: {k: v for k, v in r.items() if k not in ("timings", "error")} for i, r in run.predictions().items()})
    assert records[0] == records[1] == records[2]


def test_shards_hold_whole_videos_and_do_not_depend_on_what_is_left(tmp_path: Path) -> None:
    write_grouped_benchmark(tmp_path / "data", [3, 1, 2, 2, 1])
    items = load_items(BENCHMARKS["msvd"], tmp_path / "data").items
    shards = [shard_by_video(items, r, 2) for r in range(2)]
    assert sorted(i.id for s in shards for i in s) == sorted(i.id for i in items)
    videos = [{i.video_name for i in s} for s in shards]
    assert videos == [{"vid0", "vid2", "vid4"}, {"vid1", "vid3"}] and not videos[0] & videos[1]
    assert [g.video for g in group_by_video(items)] == ["vid0", "vid1", "vid2", "vid3", "vid4"]
    assert shard_by_video(items, 0, 1) == items


def test_configurations_of_one_pass_share_decoding_and_encoding(tmp_path: Path) -> None:
    write_grouped_benchmark(tmp_path / "data", [3, 2])
    pipe = FakePipeline(tmp_path)
    loaded = load_items(BENCHMARKS["msvd"], tmp_path / "data")
    pruners = [pipe.pruner("none"), pipe.pruner("fastervlm", reduction=0.5), pipe.pruner("fastervlm", reduction=0.9)]
    runs = [prepare_run(pipe, loaded, tmp_path / "data", p, FakeGeneration(), out=tmp_path / "runs") for p in pruners]
    runs[1].prediction_file(0).parent.mkdir(parents=True, exist_ok=True)
    with open(runs[1].prediction_file(0), "w") as f:  # the second configuration already has one item
        f.write(json.dumps({"id": "v0_0", "question": "q", "answer": "a", "pred": "done before"}) + "\n")
    summaries = predict_configurations(pipe, loaded, tmp_path / "data", list(zip(runs, pruners)), FakeGeneration(),
                                       batch_size=2, progress=False)
    assert sorted(pipe.decoded) == sorted(pipe.encoded) == ["vid0", "vid1"]
    assert len(pipe.prepared) == 6  # each video once per configuration
    assert [(s.done, s.skipped) for s in summaries] == [(5, 0), (4, 1), (5, 0)]
    assert [s.tower_runs for s in summaries] == [2, 0, 0]  # shared work is counted once, on the first
    assert runs[1].predictions()["v0_0"]["pred"] == "done before"
    assert all(r["method"] == p.settings() for run, p in zip(runs, pruners) for r in list(run.predictions().values())[1:])


def test_the_default_batch_size_depends_on_the_device() -> None:
    assert default_batch_size("cpu") == default_batch_size("cpu", torch.float32) == 8
    assert default_batch_size("cuda:1") == default_batch_size("cuda", torch.float32) == 8
    assert default_batch_size("cuda", torch.float16) == default_batch_size("cuda:0", torch.bfloat16) == 1


def test_a_killed_batched_run_loses_at_most_the_batch_in_flight(tmp_path: Path) -> None:
    ids = write_grouped_benchmark(tmp_path / "data", [9, 7, 8, 6])
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS), root=str(tmp_path), delay=0.2, batch=4)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = tmp_path / "runs" / "fake-model" / "msvd" / "none" / "predictions" / "rank-00000.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.is_file() or out.read_text().count("\n") < 8):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = [r["id"] for r in read_jsonl(out)]
    assert 8 <= len(written) < len(ids), "the kill should land mid-run"
    assert len(written) % 4 == 0  # whole batches, written together
    pipe = FakePipeline(tmp_path)
    run, summary = _predict(tmp_path, pipe, batch_size=4)
    assert summary.skipped == len(written)
    assert sorted(pipe.answered) == sorted(f"what happens in {i}?" for i in ids if i not in written)
    lines = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(lines) == sorted(ids)  # every item exactly once


@pytest.mark.parametrize("batch", [0, -2])
def test_a_batch_size_below_one_is_refused(tmp_path: Path, batch: int) -> None:
    from fastervlm.errors import FasterVLMError

    write_grouped_benchmark(tmp_path / "data", [1])
    with pytest.raises(FasterVLMError, match="--batch-size .* 1 or more"):
        _predict(tmp_path, FakePipeline(tmp_path), batch_size=batch)
