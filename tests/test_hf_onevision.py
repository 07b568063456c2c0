"""LLaVA-OneVision (SigLIP without [CLS], projector before a bilinear 2 x 2 pooling, a newline after each video) on
tiny checkpoints written from transformers' own config class and loaded from disk: the [CLS]-free methods and the
received-attention score run through `apply`, `load` and the CLI; [CLS] methods are refused unless told to rank
by the received attention; scores and keys of the pooled tokens follow the model's own pooling; the newline closes
every video, pruned or not. (The keep-all == stock and batch == one-at-a-time checks shared with every family are
in test_hf_models.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_tiny import SPEC, checkpoint, one_thread, processor_inputs, stock_model, tokenizer  # noqa: F401  (autouse)

import fastervlm
from fastervlm import engine
from fastervlm.capture import QKCapture, split_heads
from fastervlm.cli import main
from fastervlm.errors import UnsupportedModelError
from fastervlm.methods import create_pruner, has_setting, list_methods
from fastervlm.methods.base import CLS_SCORES, PATCH_KEYS, RECEIVED_SCORES
from fastervlm.models.base import GenerationSettings
from fastervlm.scoring import received_patch_scores
from fastervlm.tiny.hf import TinyHFSpec, write_tiny_hf_checkpoint

FAMILY = "llava_onevision"
SIDE = SPEC.image_size // SPEC.patch_size  # 6 x 6 patches per frame
N = math.ceil(SIDE / 2) ** 2  # 9 pooled tokens per frame
SHORT = GenerationSettings(max_new_tokens=3)
CLS_METHODS = sorted(name for name, cls in list_methods().items() if CLS_SCORES in cls.inputs)
FREE_METHODS = sorted(name for name, cls in list_methods().items() if CLS_SCORES not in cls.inputs)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint(FAMILY, tmp_path_factory)


@pytest.fixture(scope="module")
def model(path: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    return stock_model(FAMILY, tmp_path_factory)


@pytest.fixture(scope="module")
def pipeline(path: Path) -> fastervlm.Pipeline:
    return fastervlm.load(path, device="cpu")


def video_pixels(seed: int = 0, frames: int = SPEC.num_frames, size: int = SPEC.image_size) -> torch.Tensor:
    return torch.randn(frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_registry_splits_the_methods_as_the_brief_expects() -> None:
    assert {"fastervlm", "visionzip", "vispruner"} <= set(CLS_METHODS)
    assert {"none", "random", "pool", "fastv", "divprune"} <= set(FREE_METHODS)
    assert all(has_setting(name, "score") for name in CLS_METHODS)  # each one can rank by the received score


@pytest.mark.parametrize("method", CLS_METHODS)
def test_cls_methods_are_refused_unless_they_rank_by_received_attention(method: str, model, pipeline) -> None:
    for attempt in (lambda: fastervlm.apply(model, method, keep=2),
                    lambda: pipeline.answer("What is it?", pixels=video_pixels(), method=method, keep=2)):
        with pytest.raises(UnsupportedModelError) as error:
            attempt()
        message = str(error.value)
        assert "siglip" in message.lower() and "no [CLS] token" in message and f"'{method}'" in message
        assert "score=received" in message and all(name in message for name in FREE_METHODS)
    assert "generate" not in vars(model)  # a refused apply leaves the model stock

    answer = pipeline.answer("What is it?", pixels=video_pixels(), method=method, keep=2, score="received",
                             generation=SHORT)
    assert answer.visual_tokens == SPEC.num_frames * 2 and answer.method["score"] == "received"
    inputs = processor_inputs(FAMILY, ["What is it?"])
    with fastervlm.apply(model, method, keep=2, score="received") as pruning:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert pruning.records[0].visual_tokens == SPEC.num_frames * 2
    assert int((pruning.input_ids == model.config.video_token_id).sum()) == SPEC.num_frames * 2 + 1  # + the newline


@pytest.mark.parametrize("method", FREE_METHODS)
def test_every_method_without_cls_answers(method: str, pipeline) -> None:
    pruner = create_pruner(method, **({} if list_methods()[method].baseline else {"keep": 3}))
    answer = pipeline.answer("What is it?", pixels=video_pixels(1), method=pruner, generation=SHORT)
    full = pipeline.answer("What is it?", pixels=video_pixels(1), method="none", generation=SHORT)
    kept = SPEC.num_frames * (N if pruner.baseline else 3)
    assert answer.visual_tokens == kept and full.visual_tokens == SPEC.num_frames * N
    if pruner.stage == "vision":  # the prompt shrinks by the dropped tokens, the newline stays
        assert full.prompt_tokens - answer.prompt_tokens == SPEC.num_frames * N - kept
    if answer.kept_indices is not None:  # FastV and the "video" budgets spend frames x L over the whole video
        counts = [len(frame) for frame in answer.kept_indices]
        per_frame = pruner.stage == "vision" and pruner.budget != "video"
        assert sum(counts) == kept and (not per_frame or counts == [kept // SPEC.num_frames] * SPEC.num_frames)
        assert all(0 <= index < N for frame in answer.kept_indices for index in frame)
    assert 1 <= len(answer.output_ids) <= SHORT.max_new_tokens


@pytest.mark.parametrize("method", [name for name in FREE_METHODS + CLS_METHODS if has_setting(name, "global_budget")])
def test_a_global_budget_spends_frames_x_l_over_the_video(method: str, pipeline) -> None:
    extra = {"score": "received"} if method in CLS_METHODS else {}
    answer = pipeline.answer("What is it?", pixels=video_pixels(2), method=method, keep=3, global_budget=True,
                             generation=SHORT, **extra)
    assert answer.visual_tokens == SPEC.num_frames * 3 == sum(len(frame) for frame in answer.kept_indices)


@pytest.mark.parametrize("method, settings", [("divprune", {}), ("vispruner", {"score": "received"}),
                                              ("visionzip", {"score": "received"}), ("pool", {})])
def test_batch_equals_one_at_a_time(method: str, settings: dict, pipeline) -> None:
    frames = [pipeline.frames(pixels=video_pixels(seed)) for seed in (3, 4, 5)]
    questions = ["What is it?", "What is the man doing in the video right now?", "Why?"]
    pruner = pipeline.pruner(method, keep=4, **settings)
    together = pipeline.run(frames, questions, pruner, SHORT)
    alone = [pipeline.run([f], [q], pruner, SHORT)[0] for f, q in zip(frames, questions)]
    for a, b in zip(together, alone):
        assert (a.output_ids, a.kept_indices, a.visual_tokens, a.prompt_tokens) == \
               (b.output_ids, b.kept_indices, b.visual_tokens, b.prompt_tokens)


@torch.no_grad()
def test_received_score_from_q_k_equals_the_eager_attention_maps_column_mean(pipeline) -> None:
    stream, model = pipeline.adapter.stream, pipeline.adapter.model
    pixels = torch.stack([video_pixels(6), video_pixels(7)])
    attention = stream.feature_attention()
    with QKCapture(attention) as qk:
        stream.hidden_states(pixels)
    queries, keys = split_heads(qk.query, attention.head_dim), split_heads(qk.keys, attention.head_dim)
    per_patch = received_patch_scores(queries, keys, attention.scale, has_cls=False, chunk=7)
    model.set_attn_implementation({"vision_config": "eager", "text_config": "sdpa", "": "sdpa"})
    try:
        maps = stream.tower(pixels.flatten(0, 1), output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    layer = [block.self_attn for block in stream.tower.encoder.layers].index(attention)
    assert layer == len(maps) - 1  # vision_feature_layer -1: the last layer
    eager = maps[layer].mean(dim=2).mean(dim=1)  # each key's attention, mean over queries, then heads
    torch.testing.assert_close(per_patch, eager, atol=1e-5, rtol=1e-5)

    (first, second) = engine.encode(stream, pixels, frozenset({RECEIVED_SCORES}))
    pooled = torch.stack([first.received_scores, second.received_scores]).flatten(0, 1)
    window_mean = eager.view(-1, SIDE // 2, 2, SIDE // 2, 2).mean(dim=(2, 4)).flatten(1)  # an even grid: 2 x 2 means
    torch.testing.assert_close(pooled, window_mean, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_keys_of_the_pooled_tokens_are_the_pooled_patch_keys(pipeline) -> None:
    stream = pipeline.adapter.stream
    pixels = video_pixels(8)[None]
    attention = stream.feature_attention()
    with QKCapture(attention, query=None) as qk:
        stream.hidden_states(pixels)
    keys = split_heads(qk.keys, attention.head_dim)  # (T, H, 36, D)
    (encoded,) = engine.encode(stream, pixels, frozenset({PATCH_KEYS}))
    heads, dim = keys.shape[1], keys.shape[3]
    expected = keys.view(SPEC.num_frames, heads, SIDE // 2, 2, SIDE // 2, 2, dim).mean(dim=(3, 5)).flatten(2, 3)
    torch.testing.assert_close(encoded.patch_keys, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_the_newline_closes_each_video_after_its_kept_tokens(model) -> None:
    inputs = processor_inputs(FAMILY, ["What is it?", "Why?"], seed=9)
    stock = model.model.get_video_features(inputs["pixel_values_videos"]).pooler_output  # (B, T * N + 1, D)
    seen: dict[str, torch.Tensor] = {}

    def keep_embeds(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    try:
        with fastervlm.apply(model, "random", keep=2) as pruning:
            model(**inputs)
    finally:
        hook.remove()
    for row, record in enumerate(pruning.records):
        at = (pruning.input_ids[row] == model.config.video_token_id).nonzero().squeeze(1)
        assert len(at) == SPEC.num_frames * 2 + 1
        kept = torch.tensor([frame * N + index for frame, indices in enumerate(record.kept_indices) for index in indices])
        torch.testing.assert_close(seen["embeds"][row, at[:-1]], stock[row, kept], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(seen["embeds"][row, at[-1]], model.model.image_newline, atol=0, rtol=0)


def test_the_engine_prompt_ends_the_video_with_the_newline_outside_the_visual_mask(pipeline) -> None:
    adapter = pipeline.adapter
    pixels = video_pixels(10)[None]
    encoded = engine.encode(adapter.stream, pixels)
    visuals = engine.project(adapter.stream, encoded, engine.select(encoded, create_pruner("random", keep=2)))
    (prompt,) = engine.build_prompts(adapter, ["What is it?"], visuals)
    visual = prompt.visual_mask.nonzero().squeeze(1)
    assert len(visual) == SPEC.num_frames * 2 and bool((visual.diff() == 1).all())  # one run of the kept tokens
    after = int(visual[-1]) + 1
    assert not prompt.visual_mask[after]
    torch.testing.assert_close(prompt.embeds[after], adapter.model.model.image_newline.detach(), atol=0, rtol=0)
    assert visuals[0].tokens == SPEC.num_frames * 2 and len(visuals[0].item()) == SPEC.num_frames * 2 + 1


def test_an_odd_grid_pools_bilinearly_as_the_model_does(tmp_path: Path) -> None:
    """The released model's 27 x 27 grid pools to 14 x 14 with bilinear weights, not 2 x 2 windows: 7 x 7 -> 4 x 4."""
    spec = TinyHFSpec(image_size=98, vision_layers=2, llm_layers=2)
    path = write_tiny_hf_checkpoint(tmp_path, FAMILY, spec, tokenizer=tokenizer())
    pipeline = fastervlm.load(path, device="cpu")
    assert pipeline.num_patches == 16
    pixels = video_pixels(11, size=98)
    full = pipeline.answer("What is it?", pixels=pixels, method="none", generation=SHORT)
    assert full.visual_tokens == SPEC.num_frames * 16
    ids, mask = pipeline.adapter.prompt_batch(["What is it?"])
    assert int((ids == pipeline.adapter.stream.token_id).sum()) == SPEC.num_frames * 16 + 1  # the processor's count
    stock = pipeline.adapter.model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels[None],
                                            max_new_tokens=SHORT.max_new_tokens, do_sample=False,
                                            pad_token_id=pipeline.adapter.tokenizer.pad_token_id)
    eos = pipeline.adapter.tokenizer.eos_token_id
    expected = stock[0, ids.shape[1]:].tolist()
    assert full.output_ids == (expected[: expected.index(eos) + 1] if eos in expected else expected)
    stream = pipeline.adapter.stream
    scores = torch.rand(2, SPEC.num_frames, 49, generator=torch.Generator().manual_seed(0))
    pooled = stream.candidate_scores(scores)
    grid = scores.view(-1, 1, 7, 7)
    expected_scores = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear").view(2, SPEC.num_frames, 16)
    torch.testing.assert_close(pooled, expected_scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stream.candidate_scores(torch.ones(1, 1, 49)), torch.ones(1, 1, 16))  # weights sum to 1


def test_frames_are_resized_and_normalised_with_siglip_statistics(pipeline, path: Path) -> None:
    from PIL import Image

    settings = json.loads((path / "video_preprocessor_config.json").read_text())
    assert settings["image_mean"] == [0.5, 0.5, 0.5] and settings["size"] == {"height": 84, "width": 84}
    frames = np.random.default_rng(0).integers(0, 256, (2, 60, 100, 3), dtype=np.uint8)
    pixels = pipeline.adapter.preprocess(frames)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((84, 84), Image.Resampling.BICUBIC)) for f in frames])
    expected = (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=1e-5)  # the whole frame, squashed, no crop
    assert np.abs(pipeline.adapter.display_frames(pixels).astype(int) - resized).max() <= 1


def test_cli_answers_with_the_received_score_and_refuses_the_cls_score(capsys, path: Path, synthetic_video: Path) -> None:
    args = ["answer", "--model", str(path), "--video", str(synthetic_video), "--question", "What moves?",
            "--device", "cpu", "--max-new-tokens", "2", "--keep", "2", "--method", "vispruner", "--json"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("fastervlm: error:") and "no [CLS] token" in error and "--method-option score=received" in error
    assert main([*args, "--method-option", "score=received"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["visual_tokens"] == SPEC.num_frames * 2 and result["method"]["score"] == "received"
    assert [len(frame) for frame in result["kept_indices"]] == [2] * SPEC.num_frames


def test_show_draws_the_received_attention(capsys, pipeline, path: Path, synthetic_video: Path, tmp_path: Path) -> None:
    from fastervlm.show import heatmap_scores

    frames = pipeline.frames(pixels=video_pixels(12))
    (encoded,) = engine.encode(pipeline.adapter.stream, frames.pixels[None], frozenset({RECEIVED_SCORES}))
    torch.testing.assert_close(heatmap_scores(pipeline, frames), encoded.received_scores, atol=0, rtol=0)
    out = tmp_path / "kept.png"
    assert main(["show", "--model", str(path), "--video", str(synthetic_video), "--method", "divprune", "--keep", "2",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "16 visual tokens kept (divprune)" in capsys.readouterr().err
