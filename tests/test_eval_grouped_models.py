"""The grouped, batched harness on real tiny checkpoints (original-format Video-LLaVA and transformers'
Video-LLaVA): for every registered method, its records (text and output ids) equal answering each item alone
through the straight-down engine path; a sweep's cells equal their runs alone, with one tower run per video."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastervlm.eval.benchmarks import BENCHMARKS, load_items, video_path
from fastervlm.eval.predict import predict_items, prepare_run
from fastervlm.eval.sweep import Cell, sweep_predict
from fastervlm.methods import create_pruner, list_methods
from fastervlm.models.base import GenerationSettings

SHORT = GenerationSettings(max_new_tokens=4)
KEEP = 3
# (video, question): 3 videos with 3, 1 and 3 questions of different lengths, and a video that is missing.
QUESTIONS = [
    ("clipA", "What is moving?"),
    ("clipA", "Which colour is the square in the top left corner of the picture, and where does it go?"),
    ("clipB", "Is it day?"),
    ("clipA", "Why?"),
    ("clipC", "How many things move across the frame from the left to the right side during the video?"),
    ("gone", "Where is this video?"),
    ("clipC", "What happens first?"),
    ("clipC", "What colour is the background?"),
]


def _method_pruner(name: str):
    return create_pruner(name) if list_methods()[name].budget == "unbudgeted" else create_pruner(name, keep=KEEP)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastervlm.tiny.video import write_synthetic_video

    from eval_helpers import write_questions

    root = tmp_path_factory.mktemp("grouped-data")
    videos = write_questions(root, QUESTIONS)
    for seed, video in enumerate(("clipA", "clipB", "clipC")):
        write_synthetic_video(videos / f"{video}.avi", num_frames=10, height=32, width=48, seed=seed)
    return root


@pytest.fixture(scope="module", params=["videollava", "video_llava_hf"])
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    import fastervlm

    if request.param == "videollava":
        from fastervlm.tiny import ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint(cache_dir=tmp_path_factory.getbasetemp() / "tiny")
    else:
        from hf_tiny import checkpoint

        path = checkpoint("video_llava", tmp_path_factory)
    return fastervlm.load(path, device="cpu")


def _alone(pipeline, data_root: Path, pruner) -> dict[str, tuple[str, list[int]]]:
    """Each item answered by itself: decoded, encoded, selected and generated alone (the per-item loop)."""
    loaded = load_items(BENCHMARKS["msvd"], data_root)
    found = {}
    for item in loaded.items:
        path = video_path(loaded.benchmark, data_root, item)
        if path is not None:
            (answer,) = pipeline.run([pipeline.frames(video=path)], [item.question], pruner, SHORT)
            found[item.id] = (answer.text, answer.output_ids)
    return found


def _predicted(run) -> dict[str, tuple[str, list[int]]]:
    return {i: (r["pred"], r["output_ids"]) for i, r in run.predictions().items() if "error" not in r}


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_grouped_batches_answer_as_each_item_alone(pipeline, data_root: Path, tmp_path: Path, method: str) -> None:
    pruner = _method_pruner(method)
    try:
        pipeline.check_method(pruner)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"{method} does not run on this family: {err}")
    loaded = load_items(BENCHMARKS["msvd"], data_root)
    run = prepare_run(pipeline, loaded, data_root, pruner, SHORT, out=tmp_path)
    summary = predict_items(pipeline, run, loaded, data_root, pruner, SHORT, batch_size=3, progress=False)
    assert _predicted(run) == _alone(pipeline, data_root, pruner)
    assert (summary.done, summary.errors, summary.tower_runs) == (7, 1, 3)  # one tower run per video
    assert summary.batches == 3  # 7 questions in batches of 3 across videos
    assert "no video gone.*" in run.predictions()["v_gone_5"]["error"]
    record = run.predictions()["v_clipA_0"]
    assert sum(record["tokens_per_frame"]) == record["visual_tokens"] or list_methods()[method].stage == "llm"
    assert record["llm_prefill_flops"] > 0


def test_a_sweep_predicts_every_cell_as_alone_with_one_tower_run_per_video(pipeline, data_root: Path,
                                                                           tmp_path: Path) -> None:
    n = pipeline.num_patches
    cells = [Cell("none", {}), *(Cell("fastervlm", {"keep": k}) for k in (1, KEEP, n // 2)), Cell("fastv", {"keep": KEEP})]
    loaded = load_items(BENCHMARKS["msvd"], data_root)
    runs, summaries = sweep_predict(pipeline, [loaded], data_root, cells, SHORT, out=tmp_path, progress=False,
                                    batch_size=4)
    assert sum(s.tower_runs for s in summaries) == 3  # 3 videos, 5 configurations: the tower ran 3 times, not 15
    assert summaries[0].configurations == 5
    for cell, run in zip(cells, runs):
        pruner = create_pruner(cell.method, **cell.settings)
        assert _predicted(run) == _alone(pipeline, data_root, pruner), cell
