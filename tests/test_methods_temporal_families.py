"""The temporal methods (budgets spread over the frames, merges across frames) on every transformers family's tiny
checkpoint, through `fastervlm.apply` and through the pipeline: the prompt holds exactly the kept tokens (frames x
L), a batch answers as its samples one at a time, and each answer's per-frame counts and merge groups add up."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import FAMILIES, SPEC, checkpoint, one_thread, processor_inputs, ranking, stock_model  # noqa: F401
from test_hf_models import CANDIDATES, FRAMES, greedy, placeholder_id

import fastervlm
from fastervlm.models.base import GenerationSettings

METHODS = ("vidcom2", "fastvid")
QUESTIONS = ["What is it?", "What is the man doing in the video right now?", "Why?"]
KEEP = 3


def _settings(family: str, method: str) -> dict:
    """fastvid ranks its salient tokens by an attention score: the received one on encoders without [CLS]."""
    return {"keep": KEEP, **(ranking(family) if method == "fastvid" else {})}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_apply_prunes_to_the_budget_and_a_batch_answers_as_one_at_a_time(family: str, method: str,
                                                                         tmp_path_factory) -> None:
    model = stock_model(family, tmp_path_factory)
    batch = processor_inputs(family, QUESTIONS, seed=3)
    with fastervlm.apply(model, method, **_settings(family, method)) as pruning:
        together = greedy(model, batch)[:, -5:]
        assert [r.visual_tokens for r in pruning.records] == [FRAMES[family] * KEEP] * len(QUESTIONS)
        for i in range(len(QUESTIONS)):
            single = {k: v[i : i + 1] for k, v in batch.items()}
            row = single["attention_mask"][0].bool()
            single["input_ids"], single["attention_mask"] = single["input_ids"][:, row], single["attention_mask"][:, row]
            assert torch.equal(greedy(model, single)[:, -5:], together[i : i + 1])
            shrunk = int((pruning.input_ids == placeholder_id(model, family)).sum())
            assert shrunk - FRAMES[family] * KEEP in (0, 1)  # + OneVision's newline after the video


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_pipeline_batches_and_reports_per_frame_counts(family: str, method: str, tmp_path_factory) -> None:
    pipeline = fastervlm.load(checkpoint(family, tmp_path_factory), device="cpu")
    generator = torch.Generator().manual_seed(5)
    shape = (pipeline.num_frames, 3, SPEC.image_size, SPEC.image_size)
    frames = [pipeline.frames(pixels=torch.randn(shape, generator=generator)) for _ in range(len(QUESTIONS))]
    pruner = pipeline.pruner(method, **_settings(family, method))
    settings = GenerationSettings(max_new_tokens=4)
    together = pipeline.run(frames, QUESTIONS, pruner, settings)
    alone = [pipeline.run([f], [q], pruner, settings)[0] for f, q in zip(frames, QUESTIONS)]
    for a, b in zip(together, alone):
        assert (a.output_ids, a.tokens_per_frame, a.merge_groups) == (b.output_ids, b.tokens_per_frame, b.merge_groups)
        assert a.visual_tokens == sum(a.tokens_per_frame) == FRAMES[family] * KEEP
        if a.merge_groups is not None:  # every group names a token of the answer, in the frame grid of candidates
            assert len(a.merge_groups) == FRAMES[family] and len(a.merge_groups[0]) == CANDIDATES[family]
            assert all(-1 <= g < a.visual_tokens for frame in a.merge_groups for g in frame)
