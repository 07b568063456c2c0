"""The grouped, batched harness on real tiny checkpoints (original-format Video-LLaVA and transformers'
Video-LLaVA, LLaVA-OneVision): for every registered method, its records (text and output ids) equal answering each item alone
through the straight-down engine path; a sweep's cells equal their runs alone, with one tower run per video."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastervlm.eval.benchmarks import BENCHMARKS, load_items, video_path
from fastervlm.eval.predict import predict_items, prepare_run
from fastervlm.eval.sweep import Cell, sweep_predict
from fastervlm.flops import LLMGeometry, prefill_flops
from fastervlm.methods import create_pruner, has_setting, list_methods
from fastervlm.methods.base import CLS_SCORES
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


def _method_pruner(name: str, pipeline, **settings):
    """The method with a small budget; on an encoder without [CLS], ranked by received attention where it can be."""
    if CLS_SCORES not in pipeline.adapter.stream.provides and has_setting(name, "score"):
        settings["score"] = "received"
    if list_methods()[name].budget != "unbudgeted":
        settings.setdefault("keep", KEEP)
    return pipeline.pruner(name, **settings)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastervlm.tiny.video import write_synthetic_video

    from eval_helpers import write_questions

    root = tmp_path_factory.mktemp("grouped-data")
    videos = write_questions(root, QUESTIONS)
    for seed, video in enumerate(("clipA", "clipB", "clipC")):
        write_synthetic_video(videos / f"{video}.avi", num_frames=10, height=32, width=48, seed=seed)
    return root


@pytest.fixture(scope="module", params=["videollava", "video_llava", "llava_onevision"])
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    import fastervlm

    if request.param == "videollava":
        from fastervlm.tiny import ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint(cache_dir=tmp_path_factory.getbasetemp() / "tiny")
    else:
        from hf_tiny import checkpoint

        path = checkpoint(request.param, tmp_path_factory)
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


def _whole_prompts(pipeline):
    """The same model with every prompt prefilled whole: no prefix shared between the questions on a video."""
    from fastervlm.llm import TransformersLLM
    from fastervlm.pipeline import Pipeline

    return Pipeline(pipeline.adapter, pipeline.path, TransformersLLM(pipeline.adapter, share_prefix=False))


def _predicted(run) -> dict[str, tuple[str, list[int]]]:
    return {i: (r["pred"], r["output_ids"]) for i, r in run.predictions().items() if "error" not in r}


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_grouped_batches_answer_as_each_item_alone(pipeline, data_root: Path, tmp_path: Path, method: str) -> None:
    """Grouped by video, batched across videos, each video's prompt prefix computed once: the same answers as each
    item alone with its prompt prefilled whole; the records say what was shared and what was computed."""
    pruner = _method_pruner(method, pipeline)
    loaded = load_items(BENCHMARKS["msvd"], data_root)
    run = prepare_run(pipeline, loaded, data_root, pruner, SHORT, out=tmp_path)
    summary = predict_items(pipeline, run, loaded, data_root, pruner, SHORT, batch_size=3, progress=False)
    assert _predicted(run) == _alone(_whole_prompts(pipeline), data_root, pruner)
    assert (summary.done, summary.errors, summary.tower_runs) == (7, 1, 3)  # one tower run per video
    assert summary.batches == 3  # 7 questions in batches of 3 across videos
    assert "no video gone.*" in run.predictions()["v_gone_5"]["error"]
    record = run.predictions()["v_clipA_0"]
    assert sum(record["tokens_per_frame"]) == record["visual_tokens"] or list_methods()[method].stage == "llm"
    assert record["llm_prefill_flops"] > 0
    records = [r for r in run.predictions().values() if "error" not in r]
    shared = list_methods()[method].stage == "vision"
    assert all((r["prefix_tokens"] > 0) == shared for r in records)
    if shared:  # the prefix of each video is computed once, counted for the first of its questions
        geometry = LLMGeometry.from_config(pipeline.adapter.llm_config)
        for video in ("clipA", "clipB", "clipC"):
            own = [r for r in records if r["video"] == video]
            paid = [r["computed_prefill_flops"] - prefill_flops(geometry, r["prompt_tokens"], cached=r["prefix_tokens"])
                    for r in own]
            assert sorted(paid) == [0] * (len(paid) - 1) + [prefill_flops(geometry, own[0]["prefix_tokens"])]


def test_a_sweep_predicts_every_cell_as_alone_with_one_tower_run_per_video(pipeline, data_root: Path,
                                                                           tmp_path: Path) -> None:
    n = pipeline.num_patches
    score = {} if CLS_SCORES in pipeline.adapter.stream.provides else {"score": "received"}
    cells = [Cell("none", {}), *(Cell("fastervlm", {"keep": k, **score}) for k in (1, KEEP, n // 2)),
             Cell("fastv", {"keep": KEEP})]
    loaded = load_items(BENCHMARKS["msvd"], data_root)
    runs, summaries = sweep_predict(pipeline, [loaded], data_root, cells, SHORT, out=tmp_path, progress=False,
                                    batch_size=4)
    assert sum(s.tower_runs for s in summaries) == 3  # 3 videos, 5 configurations: the tower ran 3 times, not 15
    assert summaries[0].configurations == 5
    for cell, run in zip(cells, runs):
        pruner = create_pruner(cell.method, **cell.settings)
        assert _predicted(run) == _alone(pipeline, data_root, pruner), cell
