"""The staged engine on the tiny original-format Video-LLaVA: every registered method end to end, keeping every
token equals no pruning, a batch equals one at a time, the stages reused across questions, and the inputs the
engine reads from the feature layer's q/k equal the same quantities of a full eager attention map."""

from __future__ import annotations

import pytest
import torch
from test_languagebind import reference_tower

from fastervlm import engine
from fastervlm.llm import TransformersLLM
from fastervlm.methods import baseline_method, create_pruner, list_methods
from fastervlm.methods.base import CLS_SCORES, PATCH_KEYS, PROJECTED, RECEIVED_SCORES
from fastervlm.models.base import GenerationSettings

SHORT = GenerationSettings(max_new_tokens=4)
QUESTIONS = ["What is moving?", "Which colour is the square in the top left corner of the picture?"]
PRUNING = sorted(name for name, cls in list_methods().items() if cls.budget != "unbudgeted")


def _pixels(pipeline, seed: int) -> torch.Tensor:
    size = pipeline.adapter.tower.config.image_size
    return torch.randn(pipeline.num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", PRUNING)
def test_keeping_every_token_equals_no_pruning(tiny_pipeline, method: str) -> None:
    pixels = _pixels(tiny_pipeline, 0)
    unpruned = tiny_pipeline.answer(QUESTIONS[0], pixels=pixels, method=baseline_method(), generation=SHORT)
    kept = tiny_pipeline.answer(QUESTIONS[0], pixels=pixels, method=method, keep=tiny_pipeline.num_patches,
                                generation=SHORT)
    assert kept.output_ids == unpruned.output_ids
    assert (kept.prompt_tokens, kept.visual_tokens) == (unpruned.prompt_tokens, unpruned.visual_tokens)


@pytest.mark.parametrize("method", PRUNING)
def test_a_batch_answers_as_one_at_a_time(tiny_pipeline, method: str) -> None:
    """Two videos, prompts of different lengths (left padding), greedy: the same ids either way."""
    pruner = create_pruner(method, keep=5)
    frames = [tiny_pipeline.frames(pixels=_pixels(tiny_pipeline, seed)) for seed in (1, 2)]
    together = tiny_pipeline.run(frames, QUESTIONS, pruner, SHORT)
    alone = [tiny_pipeline.run([f], [q], pruner, SHORT)[0] for f, q in zip(frames, QUESTIONS)]
    assert [a.output_ids for a in together] == [a.output_ids for a in alone]
    assert [a.visual_tokens for a in together] == [a.visual_tokens for a in alone] == [tiny_pipeline.num_frames * 5] * 2
    assert [a.kept_indices for a in together] == [a.kept_indices for a in alone]


def test_stages_reuse_one_encoding_for_many_questions_and_budgets(tiny_pipeline) -> None:
    """encode once; select twice (two budgets); ask two questions of each: the same as the straight-down path."""
    adapter = tiny_pipeline.adapter
    pixels = _pixels(tiny_pipeline, 3)
    inputs = frozenset({CLS_SCORES})
    with torch.inference_mode():
        encoded = engine.encode(adapter.stream, pixels[None].to(adapter.dtype), inputs)
        for keep in (3, 7):
            pruner = create_pruner("fastervlm", keep=keep)
            (visual,) = engine.project(adapter.stream, encoded, engine.select(encoded, pruner))
            prompts = engine.build_prompts(adapter, QUESTIONS, [visual, visual])
            outputs = TransformersLLM(adapter).generate(prompts, pruner, SHORT).ids
            direct = [tiny_pipeline.answer(q, pixels=pixels, method="fastervlm", keep=keep, generation=SHORT)
                      for q in QUESTIONS]
            assert outputs == [answer.output_ids for answer in direct]


@torch.no_grad()
def test_inputs_from_the_feature_layer_equal_the_eager_attention_map(tiny_pipeline) -> None:
    """[CLS] row, received attention (column mean of the map) and the patch keys, from the layer's own q/k."""
    adapter = tiny_pipeline.adapter
    pixels = _pixels(tiny_pipeline, 4)[None]
    (encoded,) = engine.encode(adapter.stream, pixels, frozenset({CLS_SCORES, RECEIVED_SCORES, PATCH_KEYS, PROJECTED}))
    hidden, maps = reference_tower(adapter.tower, pixels)
    feature_map = maps[-2]  # (T, H, 1 + N, 1 + N) of the feature layer (select layer -2)
    torch.testing.assert_close(encoded.cls_scores, feature_map[:, :, 0, 1:].mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded.received_scores, feature_map.mean(2).mean(1)[:, 1:], atol=1e-5, rtol=0)
    layer = adapter.tower.vision_model.encoder.layers[-2]
    attention = layer.self_attn
    assert attention is adapter.stream.feature_attention()
    spatial_input = layer.layer_norm1(layer.temporal(hidden[-3], tiny_pipeline.num_frames))  # after time attention
    keys = attention.k_proj(spatial_input).unflatten(-1, (attention.num_heads, attention.head_dim)).transpose(1, 2)
    torch.testing.assert_close(encoded.patch_keys, keys[:, :, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoded.projected, adapter.projector(hidden[-2][:, 1:]), atol=1e-4, rtol=1e-4)


def test_an_encoding_holds_only_what_the_method_asks_for(tiny_pipeline) -> None:
    adapter = tiny_pipeline.adapter
    pixels = _pixels(tiny_pipeline, 5)[None]
    with torch.inference_mode():
        (plain,) = engine.encode(adapter.stream, pixels)
        (scored,) = engine.encode(adapter.stream, pixels, frozenset({CLS_SCORES}))
    assert plain.cls_scores is None and plain.patch_keys is None and plain.projected is None
    assert scored.cls_scores.shape == (tiny_pipeline.num_frames, tiny_pipeline.num_patches)
    assert torch.equal(plain.features, scored.features)  # reading q/k changes nothing downstream


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_a_static_cache_decodes_the_same_tokens(tiny_pipeline, method: str) -> None:
    """The CUDA default (a StaticCache, the step compiled there) forced on the CPU: the same greedy tokens, for
    prompts of different lengths from two videos."""
    from fastervlm.llm import TransformersLLM
    from fastervlm.pipeline import Pipeline

    static = Pipeline(tiny_pipeline.adapter, tiny_pipeline.path, TransformersLLM(tiny_pipeline.adapter, static_cache=True))
    frames = [tiny_pipeline.frames(pixels=_pixels(tiny_pipeline, seed)) for seed in (6, 7)]
    pruner = create_pruner(method, keep=4)
    longer = GenerationSettings(max_new_tokens=10)
    assert ([a.output_ids for a in static.run(frames, QUESTIONS, pruner, longer)]
            == [a.output_ids for a in tiny_pipeline.run(frames, QUESTIONS, pruner, longer)])
