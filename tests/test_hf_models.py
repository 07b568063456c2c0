"""transformers-format families (Video-LLaVA-hf, LLaVA-1.5-hf, LLaVA-NeXT-Video-hf, LLaVA-OneVision-hf) on tiny
random checkpoints saved to disk: keep-all equals the stock model, counts agree, the cheap [CLS] row equals eager
attention, undo restores the stock model, and a batch equals its samples one at a time. FasterVLM ranks by the
received attention on OneVision (SigLIP has no [CLS]: `ranking`)."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import (  # noqa: F401  (one_thread: an autouse fixture)
    FAMILIES, NEW_TOKENS, SPEC, TRAILING, checkpoint, family_fixture, greedy, logits, model, one_thread, pixels,
    processor_inputs, ranking, stock_model, stock_placeholders,
)

import fastervlm
from fastervlm.models.base import GenerationSettings, adapter_for
from fastervlm.capture import QKCapture, split_heads
from fastervlm.hf import HFPruning
from fastervlm.models.base import feature_layer_index
from fastervlm.scoring import cls_patch_scores

PATCHES = (SPEC.image_size // SPEC.patch_size) ** 2
CANDIDATES = {"video_llava": PATCHES, "llava": PATCHES, "llava_next_video": PATCHES // 4,  # tokens per frame
              "llava_onevision": PATCHES // 4}
FRAMES = {"video_llava": SPEC.num_frames, "llava": 1, "llava_next_video": SPEC.num_frames, "llava_onevision": SPEC.num_frames}
ADAPTERS = {"video_llava": "video-llava-hf", "llava": "llava-hf", "llava_next_video": "llava-next-video-hf",
            "llava_onevision": "llava-onevision-hf"}


def _hooks(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: [*m._forward_hooks, *m._forward_pre_hooks] for name, m in model.named_modules()}


def placeholder_id(model: torch.nn.Module, family: str) -> int:
    return model.config.image_token_id if family == "llava" else model.config.video_token_id


family = family_fixture(FAMILIES)


def test_config_picks_the_family(family: str) -> None:
    assert adapter_for(checkpoint(family, None)).family == ADAPTERS[family]


def test_keeping_everything_reproduces_the_stock_model(family: str, model: torch.nn.Module) -> None:
    inputs = processor_inputs(family, ["What is it?", "What is the man doing in the video?"])
    stock_logits, stock_tokens = logits(model, inputs), greedy(model, inputs)
    for method, settings in (("none", {}), ("fastervlm", {"keep": CANDIDATES[family], **ranking(family)})):
        with fastervlm.apply(model, method, keep_cls=True, **settings) as pruning:
            assert isinstance(pruning, HFPruning)
            torch.testing.assert_close(logits(model, inputs), stock_logits, atol=1e-5, rtol=1e-5)
            assert torch.equal(greedy(model, inputs), stock_tokens)
            visual = sum(record.visual_tokens + TRAILING.get(family, 0) for record in pruning.records)
            assert visual == int((inputs["input_ids"] == placeholder_id(model, family)).sum())


def test_kept_count_and_placeholder_count_agree(family: str, model: torch.nn.Module) -> None:
    inputs = processor_inputs(family, ["What is it?", "Why?"])
    keep, trailing = 3, TRAILING.get(family, 0)
    with fastervlm.apply(model, "fastervlm", keep=keep, **ranking(family)) as pruning:
        out = greedy(model, inputs)
    placeholders = (pruning.input_ids == placeholder_id(model, family)).sum(1)
    assert placeholders.tolist() == [FRAMES[family] * keep + trailing] * 2  # [CLS] dropped by default
    assert [r.visual_tokens for r in pruning.records] == [FRAMES[family] * keep] * 2
    assert all(len(frame) == keep for r in pruning.records for frame in r.kept_indices)
    stock_length = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :stock_length], inputs["input_ids"])  # the caller's own ids come back first
    assert out.shape[1] == stock_length + NEW_TOKENS
    assert pruning.input_ids.shape[1] == stock_length - stock_placeholders(family) + FRAMES[family] * keep + trailing


def test_video_llava_keeps_each_frame_cls_on_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = stock_model("video_llava", tmp_path_factory)
    inputs = processor_inputs("video_llava", ["What is it?"])
    with fastervlm.apply(model, "fastervlm", keep=2, keep_cls=True) as pruning:
        greedy(model, inputs)
    assert int((pruning.input_ids == model.config.video_token_id).sum()) == SPEC.num_frames * (2 + 1)
    assert pruning.records[0].kept_indices is not None and all(len(f) == 2 for f in pruning.records[0].kept_indices)


@torch.no_grad()
@pytest.mark.parametrize("family", [f for f in FAMILIES if not ranking(f)], indirect=True)  # OneVision: no [CLS]
def test_cls_row_from_q_k_equals_eager_attention(family: str, model: torch.nn.Module) -> None:
    """(test_hf_onevision checks the received score of a [CLS]-less encoder against its eager map.)"""
    stream = adapter_for(checkpoint(family, None)).streams(model)[0]
    flat = next(iter(pixels(family, batch=2).values()))
    flat = flat.flatten(0, 1) if flat.ndim == 5 else flat
    layer = feature_layer_index(len(stream.tower.encoder.layers), stream.feature_layer, "vision_feature_layer")
    attention = stream.tower.encoder.layers[layer].self_attn
    assert attention is stream.feature_attention()
    with QKCapture(attention) as row:
        assert stream.tower.config._attn_implementation == "sdpa"  # the tower keeps its fast attention
        stream.tower(flat, output_hidden_states=stream.feature_layer)
    query, keys = split_heads(row.query, attention.head_dim)[:, :, 0], split_heads(row.keys, attention.head_dim)
    cheap = cls_patch_scores(query, keys, attention.scale)
    model.set_attn_implementation({"vision_config": "eager", "text_config": "sdpa", "": "sdpa"})
    try:
        eager = stream.tower(flat, output_attentions=True).attentions[layer][:, :, 0, 1:].mean(1)
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(cheap, eager, atol=1e-6, rtol=1e-5)
    side = SPEC.image_size // SPEC.patch_size
    pooled = stream.candidate_scores(cheap)
    if family == "llava_next_video":  # a pooled token scores the mean of its 2 x 2 patches
        expected = eager.view(-1, side // 2, 2, side // 2, 2).mean(dim=(2, 4)).flatten(1)
        torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=1e-5)
        assert pooled.shape[1] == CANDIDATES[family]
    else:
        assert torch.equal(pooled, cheap)


def test_undo_restores_the_stock_model(family: str, model: torch.nn.Module) -> None:
    inputs = processor_inputs(family, ["What is it?"])
    stock_logits = logits(model, inputs)
    hooks = _hooks(model)  # transformers' own output-capturing hooks, once the stock model has run
    pruning = fastervlm.apply(model, "fastervlm", reduction=0.5, **ranking(family))
    assert "generate" in vars(model) and "forward" in vars(model)
    pruned = greedy(model, inputs)
    assert pruned.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    pruning.remove()
    assert not {"generate", "forward", HFPruning.ATTRIBUTE} & set(vars(model))
    assert not {"get_video_features", "get_image_features"} & set(vars(model.model))
    assert _hooks(model) == hooks
    torch.testing.assert_close(logits(model, inputs), stock_logits, atol=0, rtol=0)
    assert fastervlm.remove(model) is False  # nothing left to undo

    fastervlm.apply(model, "fastervlm", keep=2, **ranking(family))
    fastervlm.apply(model, "none", keep_cls=True)  # a second apply replaces the first
    torch.testing.assert_close(logits(model, inputs), stock_logits, atol=1e-5, rtol=1e-5)
    assert fastervlm.remove(model) is True
    assert "generate" not in vars(model)


def test_batch_equals_one_at_a_time_through_apply(family: str, model: torch.nn.Module) -> None:
    questions = ["What is it?", "What is the man doing in the video right now?", "Why?"]
    batch = processor_inputs(family, questions, seed=3)
    with fastervlm.apply(model, "fastervlm", keep=2, **ranking(family)):
        together = greedy(model, batch)[:, -NEW_TOKENS:]
        for i in range(len(questions)):
            single = {k: v[i : i + 1] for k, v in batch.items()}
            row = single["attention_mask"][0].bool()
            single["input_ids"], single["attention_mask"] = single["input_ids"][:, row], single["attention_mask"][:, row]
            assert torch.equal(greedy(model, single)[:, -NEW_TOKENS:], together[i : i + 1])


@pytest.mark.parametrize("method", ["fastervlm", "fastv"])
def test_pipeline_batch_equals_one_at_a_time(family: str, method: str) -> None:
    pipeline = fastervlm.load(checkpoint(family, None), device="cpu")
    generator = torch.Generator().manual_seed(5)
    frames = [pipeline.frames(pixels=torch.randn(pipeline.num_frames, 3, SPEC.image_size, SPEC.image_size,
                                                 generator=generator)) for _ in range(3)]
    questions = ["What is it?", "What is the man doing in the video right now?", "Why?"]
    pruner = pipeline.pruner(method, reduction=0.5, **(ranking(family) if method == "fastervlm" else {}))
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    together = pipeline.run(frames, questions, pruner, settings)
    alone = [pipeline.run([f], [q], pruner, settings)[0] for f, q in zip(frames, questions)]
    keep = pruner.per_frame_budget(CANDIDATES[family])  # round half up: 9 -> 5
    for a, b in zip(together, alone):
        assert a.output_ids == b.output_ids and a.kept_indices == b.kept_indices and a.text == b.text
        assert a.visual_tokens == b.visual_tokens == FRAMES[family] * keep
        assert a.prompt_tokens == b.prompt_tokens
        if method == "fastervlm" and not ranking(family):
            torch.testing.assert_close(a.cls_scores, b.cls_scores)
    stages = {"vision_encoder", "selection", "projector", "llm_prefill", "llm_decode"}
    assert stages | ({"cls_scoring"} if method == "fastervlm" else set()) <= set(together[0].timings)


def test_pipeline_keep_all_equals_stock_generate(family: str, model: torch.nn.Module) -> None:
    """fastervlm.load's own prompt (chat template or model card) and pixels through the stock model give the
    same tokens as the pipeline with every token kept."""
    pipeline = fastervlm.load(checkpoint(family, None), device="cpu", keep_cls=True)
    adapter = pipeline.adapter
    frame_pixels = torch.randn(pipeline.num_frames, 3, SPEC.image_size, SPEC.image_size,
                               generator=torch.Generator().manual_seed(7))
    answer = pipeline.answer("What is it?", pixels=frame_pixels, method="none",
                             generation=GenerationSettings(max_new_tokens=NEW_TOKENS))
    marker = "<image>" if family == "llava" else "<video>"
    assert adapter.prompt_text("What is it?") == f"USER: {marker}\nWhat is it? ASSISTANT:"
    ids, mask = adapter.prompt_batch(["What is it?"], stock_placeholders(family))
    media = {"pixel_values": frame_pixels} if family == "llava" else {"pixel_values_videos": frame_pixels[None]}
    stock = model.generate(input_ids=ids, attention_mask=mask, **media, max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=adapter.tokenizer.eos_token_id, pad_token_id=adapter.tokenizer.pad_token_id)
    expected = stock[0, ids.shape[1]:].tolist()
    eos = adapter.tokenizer.eos_token_id
    assert answer.output_ids == (expected[: expected.index(eos) + 1] if eos in expected else expected)
    assert answer.prompt_tokens == ids.shape[1]
    assert answer.visual_tokens == stock_placeholders(family) - TRAILING.get(family, 0)


def test_llm_stage_method_sees_every_visual_token(family: str, model: torch.nn.Module) -> None:
    inputs = processor_inputs(family, ["What is it?", "Why?"])
    stock = greedy(model, inputs)
    with fastervlm.apply(model, "fastv", keep_cls=True) as pruning:  # FastV without a budget keeps all = stock
        assert torch.equal(greedy(model, inputs), stock)
    assert torch.equal(pruning.input_ids, inputs["input_ids"])
    with fastervlm.apply(model, "fastv", keep=1) as pruning:
        pruned = greedy(model, inputs)
    assert pruned.shape == stock.shape
    visual = (pruning.input_ids == placeholder_id(model, family)).sum(1)  # every patch reaches the LLM
    assert visual.tolist() == [FRAMES[family] * CANDIDATES[family] + TRAILING.get(family, 0)] * 2
    for record in pruning.records:  # what FastV kept from layer K on: L per frame on average, FRAMES * L in all
        assert record.visual_tokens == FRAMES[family] * 1 == sum(len(frame) for frame in record.kept_indices)
        assert all(frame == sorted(frame) and set(frame) <= set(range(CANDIDATES[family])) for frame in record.kept_indices)


@pytest.mark.parametrize("video_family", ["llava_next_video", "llava_onevision"])
def test_anyres_families_refuse_images_while_pruning(video_family: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from fastervlm.errors import UnsupportedModelError

    model = stock_model(video_family, tmp_path_factory)
    inputs = processor_inputs(video_family, ["What is it?"])
    with fastervlm.apply(model, "fastervlm", keep=2, **ranking(video_family)):
        with pytest.raises(UnsupportedModelError, match="remove"):
            model(**inputs, pixel_values=torch.zeros(1, 1, 3, SPEC.image_size, SPEC.image_size))
