"""Qwen2.5-VL and Qwen3-VL through `fastervlm.load` (the engine path) on tiny checkpoints: every token kept gives the
stock model's greedy tokens, a budget gives what `apply` gives, the received score equals the column mean of an
attention map computed by hand, every method runs or is refused clearly, and a batch of differently sized videos
answers as one at a time."""

from __future__ import annotations

import sys

import pytest
import torch
from hf_tiny import one_thread  # noqa: F401  (autouse)
from qwen_tiny import NEW_TOKENS, SIZES, adapter, checkpoint, decoded, family, model  # noqa: F401

import fastervlm
from fastervlm import engine
from fastervlm.errors import FasterVLMError, UnsupportedModelError
from fastervlm.methods import create_pruner, has_setting, list_methods
from fastervlm.methods.base import PATCH_KEYS, RECEIVED_SCORES
from fastervlm.models.base import GenerationSettings

SHORT = GenerationSettings(max_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def pipeline(family: str):
    return fastervlm.load(checkpoint(family, None), device="cpu")


def _stock_ids(model: torch.nn.Module, inputs: dict[str, torch.Tensor], eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                             pad_token_id=model.config.text_config.pad_token_id)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_sixteen_frames_are_eight_temporal_patches(pipeline) -> None:
    frames = decoded(pipeline.adapter, SIZES[0], seed=1)
    (tokens,) = engine.encode(pipeline.adapter.stream, [frames.pixels], times=[frames.times])
    assert pipeline.num_frames == 16 and tokens.frames == 8 and pipeline.num_patches is None
    assert tokens.patches == tokens.grid[0] * tokens.grid[1] and tokens.positions.shape == (8, tokens.patches, 3)


@pytest.mark.parametrize("method, settings", [("none", {}), ("fastervlm", {"keep": 2, "score": "received"}),
                                              ("visionzip", {"keep": 3, "score": "received"})])
def test_the_engine_answers_as_the_stock_model_and_apply(pipeline, family: str, model: torch.nn.Module, method: str,
                                                        settings: dict) -> None:
    """Every token kept: the stock model's own greedy tokens; with a budget: what `apply` hands the stock model."""
    frames = decoded(pipeline.adapter, SIZES[0], seed=2)
    question = "What is moving in the video?"
    answer = pipeline.run([frames], [question], pipeline.pruner(method, **settings), SHORT)[0]
    inputs = adapter(family, model).processor_batch([question], videos=[frames])
    eos = pipeline.adapter.tokenizer.eos_token_id
    with fastervlm.apply(model, method, **settings) as pruning:
        assert answer.output_ids == _stock_ids(model, inputs, eos)
    assert answer.kept_indices == pruning.records[0].kept_indices
    assert answer.prompt_tokens == pruning.input_ids.shape[1]


def _hand_received(tower: torch.nn.Module, pixels: list[torch.Tensor], grids: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """The received score by hand: the last block's input -> q, k (its qkv, the vision RoPE written out), one full
    attention map per temporal patch, its column mean over heads and queries, window order undone, 4 patches summed."""
    from fastervlm.models.qwen_frames import patchify

    block = tower.blocks[-1].attn
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, a, k: seen.update(x=a[0] if a else k["hidden_states"],
                                                                         rope=k["position_embeddings"]), with_kwargs=True)
    config = tower.config
    rows = [patchify(p, config.patch_size, config.temporal_patch_size, config.spatial_merge_size)[0] for p in pixels]
    with torch.no_grad():
        tower(torch.cat(rows), grid_thw=torch.tensor(grids))
    handle.remove()
    heads = block.num_heads
    q, k, _ = block.qkv(seen["x"]).view(len(seen["x"]), 3, heads, -1).unbind(1)  # (S, H, D)
    cos, sin = (part[:, None] for part in seen["rope"])
    half = q.shape[-1] // 2

    def rotate(x: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

    q, k = rotate(q), rotate(k)
    received, start = [], 0
    for t, h, w in grids:
        for _ in range(t):
            qf, kf = q[start:start + h * w].transpose(0, 1), k[start:start + h * w].transpose(0, 1)
            weights = torch.softmax(qf @ kf.transpose(1, 2) * block.scaling, dim=-1)  # (H, L, L): the map
            received.append(weights.mean(dim=(0, 1)))
            start += h * w
    merged = torch.cat(received).view(-1, 4).sum(dim=1)
    if hasattr(tower, "window_size"):  # Qwen2.5-VL keeps tokens in window order
        from transformers.vision_utils import get_vision_window_index

        index, _ = get_vision_window_index(torch.tensor(grids), spatial_merge_size=2, window_size=tower.window_size,
                                           patch_size=tower.patch_size)
        merged = merged[torch.argsort(index)]
    sizes = [t * h * w // 4 for t, h, w in grids]
    return [part.view(t, -1) for part, (t, _, _) in zip(merged.split(sizes), grids)]


def test_received_scores_equal_the_column_mean_of_the_attention_map(pipeline) -> None:
    stream = pipeline.adapter.stream
    pixels = [decoded(pipeline.adapter, size, seed=i, frames=4).pixels for i, size in enumerate(SIZES)]
    tokens = engine.encode(stream, pixels, frozenset({RECEIVED_SCORES, PATCH_KEYS}))
    patch = stream.tower.config.patch_size
    grids = [(2, p.shape[2] // patch, p.shape[3] // patch) for p in pixels]
    for cheap, hand, item in zip((t.received_scores for t in tokens), _hand_received(stream.tower, pixels, grids), tokens):
        torch.testing.assert_close(cheap, hand, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cheap.sum(dim=1), torch.ones(2))  # each frame's queries spread all their weight
        assert item.patch_keys.shape[:3] == (2, stream.feature_attention().num_heads, item.patches)
    assert len({t.patches for t in tokens}) == 3  # three sizes, three grids


def _settings(name: str) -> dict:
    settings = {} if list_methods()[name].budget == "unbudgeted" else {"keep": 2}
    return {**settings, **({"score": "received"} if has_setting(name, "score") else {})}


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_every_method_runs_and_a_batch_answers_as_one_at_a_time(pipeline, method: str) -> None:
    frames = [decoded(pipeline.adapter, size, seed=i) for i, size in enumerate(SIZES)]
    questions = ["What is it?", "What is the man doing in the video right now?", "Why?"]
    pruner = pipeline.pruner(method, **_settings(method))
    alone = [pipeline.run([f], [q], pruner, SHORT)[0] for f, q in zip(frames, questions)]
    if list_methods()[method].stage == "llm":  # one budget per batch: differently sized inputs are refused
        with pytest.raises(UnsupportedModelError, match="one at a time"):
            pipeline.run(frames, questions, pruner, SHORT)
        together = [pipeline.run(frames[:1] * 2, questions[:2], pruner, SHORT)[0]]
    else:
        together = pipeline.run(frames, questions, pruner, SHORT)
    for a, b in zip(together, alone):
        assert (a.output_ids, a.kept_indices, a.visual_tokens, a.grid) == (b.output_ids, b.kept_indices,
                                                                           b.visual_tokens, b.grid)
    assert len({a.grid for a in alone}) == 3
    llm_stage = list_methods()[method].stage == "llm"  # FastV reports what it kept from its layer on
    assert all(a.visual_tokens == sum(a.tokens_per_frame) or llm_stage for a in alone)


@pytest.mark.parametrize("method", sorted(name for name, cls in list_methods().items() if "cls_scores" in cls.inputs))
def test_cls_methods_without_received_are_refused_naming_cls(pipeline, method: str) -> None:
    with pytest.raises(UnsupportedModelError, match=r"no \[CLS\] token.*score=received"):
        pipeline.pruner(method, keep=2)


def test_a_budget_above_a_videos_tokens_is_refused_clearly(pipeline) -> None:
    frames = decoded(pipeline.adapter, SIZES[2], seed=0)
    pruner = pipeline.pruner("random", keep=50)  # the form is fine; this video has fewer tokens per frame
    with pytest.raises(FasterVLMError, match="between 0 and"):
        pipeline.run([frames], ["What?"], pruner, SHORT)


def test_images_are_refused_by_the_engine_path_with_the_fix(pipeline, tmp_path) -> None:
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    with pytest.raises(FasterVLMError, match="pass --video"):
        pipeline.answer("What is it?", image=image, method="none")


def test_the_stream_reads_the_tower_modules_it_says(pipeline) -> None:
    stream = pipeline.adapter.stream
    assert stream.feature_attention() is stream.tower.blocks[-1].attn
    assert type(stream.feature_attention()).__module__ in sys.modules
    assert create_pruner("fastervlm", keep=1, score="received").required_inputs() <= stream.provides
