"""`fastervlm.apply` on Qwen2.5-VL and Qwen3-VL (tiny checkpoints from disk, fp32, CPU): keeping every token gives
the stock logits and greedy tokens, for videos of different sizes in one batch and for images; with a budget the
LLM's prefill holds exactly the kept tokens at their stock (t, h, w) positions, decoding starts where the stock
model's does, and the logits equal a reference built by hand from the stock model's own pieces."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hf_tiny import one_thread  # noqa: F401  (autouse)
from qwen_tiny import NEW_TOKENS, adapter, family, greedy, image_inputs, logits, model, video_inputs  # noqa: F401

import fastervlm
from fastervlm.errors import UnsupportedModelError

RECEIVED = {"score": "received"}


def _lm_calls(model: torch.nn.Module) -> tuple[list[dict[str, Any]], Any]:
    """What the language model receives at each call (inputs_embeds, position_ids, ...)."""
    calls: list[dict[str, Any]] = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("media", ["video", "image"])
def test_keeping_every_token_gives_the_stock_logits_and_tokens(family: str, model: torch.nn.Module, media: str) -> None:
    qwen = adapter(family, model)
    questions = ["What is it?", "What happens in the video right now?"]
    inputs = (video_inputs if media == "video" else image_inputs)(qwen, questions)
    grids = inputs["video_grid_thw" if media == "video" else "image_grid_thw"]
    assert len(set(map(tuple, grids[:, 1:].tolist()))) == 2  # two sizes, two grids: N differs in the batch
    stock_logits, stock_tokens = logits(model, inputs), greedy(model, inputs)
    for method, settings in (("none", {}), ("fastervlm", {"reduction": 0.0, **RECEIVED})):
        with fastervlm.apply(model, method, **settings) as pruning:
            torch.testing.assert_close(logits(model, inputs), stock_logits, atol=1e-5, rtol=1e-5)
            assert torch.equal(greedy(model, inputs), stock_tokens), method
        assert [r.modality for r in pruning.records] == [media] * 2


def _reference_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      kept: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock model's own video features gathered at the kept indices (DeepStack's too), at the stock positions
    of their columns, the text at its own: the language model and head run on that, by hand (one video)."""
    ids, grid = inputs["input_ids"][0], inputs["video_grid_thw"]
    with torch.no_grad():
        stock = model.model.get_video_features(inputs["pixel_values_videos"], grid)
        positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                  video_grid_thw=grid, attention_mask=inputs["attention_mask"],
                                                  **({"second_per_grid_ts": inputs["second_per_grid_ts"]}
                                                     if "second_per_grid_ts" in inputs else {}))
        per_frame = int(grid[0, 1] * grid[0, 2] // 4)
        flat = torch.tensor([frame * per_frame + index for frame, indices in enumerate(kept) for index in indices])
        placeholders = (ids == model.config.video_token_id).nonzero().squeeze(1)
        columns = torch.cat([(ids != model.config.video_token_id).nonzero().squeeze(1), placeholders[flat]]).sort().values
        embeds = model.model.get_input_embeddings()(ids[columns])[None]
        visual = (ids[columns] == model.config.video_token_id)[None]
        embeds[visual] = stock.pooler_output[0][flat]
        deep = {}
        if getattr(stock, "deepstack_features", None):
            deep = {"visual_pos_masks": visual, "deepstack_visual_embeds": [layer[0][flat] for layer in
                                                                           stock.deepstack_features]}
        out = model.model.language_model(inputs_embeds=embeds, position_ids=positions[:, :, columns], **deep)
        return model.lm_head(out.last_hidden_state), positions[:, :, columns]


def test_a_budget_prefills_the_kept_tokens_at_their_stock_positions(family: str, model: torch.nn.Module) -> None:
    qwen = adapter(family, model)
    inputs = video_inputs(qwen, ["What is moving?"])
    frames = int(inputs["video_grid_thw"][0, 0])
    calls, handle = _lm_calls(model)
    try:
        with fastervlm.apply(model, "fastervlm", keep=2, **RECEIVED) as pruning:
            pruned_logits = logits(model, inputs)
            calls.clear()
            pruned_tokens = greedy(model, inputs)
        pruned_calls = list(calls)
        calls.clear()
        greedy(model, inputs)  # the stock model, for its first decoding step
        stock_calls = list(calls)
    finally:
        handle.remove()
    kept = pruning.records[0].kept_indices
    assert [len(frame) for frame in kept] == [2] * frames
    prefill = pruned_calls[0]
    assert prefill["inputs_embeds"].shape[1] == inputs["input_ids"].shape[1] - int(inputs["video_grid_thw"][0].prod()) // 4 + 2 * frames
    reference, positions = _reference_logits(model, inputs, kept)
    torch.testing.assert_close(prefill["position_ids"][1:], positions)  # text row first, as generate passes it
    torch.testing.assert_close(pruned_logits, reference, atol=1e-5, rtol=1e-5)
    first_step = pruned_calls[1]["position_ids"][..., -1], stock_calls[1]["position_ids"][..., -1]
    assert torch.equal(first_step[0][1:], first_step[1][1:])  # the (t, h, w) of the first generated token
    assert pruned_tokens.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


def test_the_stock_forward_continues_from_the_stock_rope_delta(family: str, model: torch.nn.Module) -> None:
    """A decoding step through the model's own forward (cache, no positions) lands where the stock one does."""
    qwen = adapter(family, model)
    inputs = video_inputs(qwen, ["What is moving?"])
    with torch.no_grad():
        model(**inputs)
        stock_delta = model.model.rope_deltas.clone()
        with fastervlm.apply(model, "fastervlm", keep=1, **RECEIVED) as pruning:
            model(**inputs)
    dropped = inputs["input_ids"].shape[1] - pruning.input_ids.shape[1]
    assert dropped > 0
    assert torch.equal(model.model.rope_deltas, stock_delta + dropped)


def test_batch_equals_one_at_a_time_through_apply(family: str, model: torch.nn.Module) -> None:
    qwen = adapter(family, model)
    questions = ["What is it?", "What is the man doing in the video right now?", "Why?"]
    videos = [video_inputs(qwen, [q], sizes=(size,), seed=i) for i, (q, size) in
              enumerate(zip(questions, ((60, 90), (84, 84), (40, 100))))]
    batch = video_inputs(qwen, questions, sizes=((60, 90), (84, 84), (40, 100)))
    with fastervlm.apply(model, "fastervlm", keep=2, **RECEIVED):
        together = greedy(model, batch)[:, -NEW_TOKENS:]
        alone = torch.cat([greedy(model, single)[:, -NEW_TOKENS:] for single in videos])
    assert torch.equal(together, alone)


def test_cls_methods_are_refused_naming_cls(family: str, model: torch.nn.Module) -> None:
    with pytest.raises(UnsupportedModelError, match=r"\[CLS\].*score=received"):
        fastervlm.apply(model, "fastervlm", keep=2)
    assert not hasattr(model, fastervlm.hf.HFPruning.ATTRIBUTE)


def test_fastv_with_deepstack_past_its_layer_keeps_the_stock_answer_when_it_keeps_everything(
        family: str, model: torch.nn.Module) -> None:
    """FastV at K = 1 prunes the hidden states before Qwen3-VL's second DeepStack layer: with every token kept, the
    features it adds itself to the kept tokens must give the stock logits."""
    inputs = video_inputs(adapter(family, model), ["What is it?", "Why?"], sizes=((60, 90),))
    stock, stock_tokens = logits(model, inputs), greedy(model, inputs)
    for settings in ({}, {"reduction": 0.0}):  # no budget; a budget that keeps every token (the pruning path)
        with fastervlm.apply(model, "fastv", layer=1, **settings):
            torch.testing.assert_close(logits(model, inputs), stock, atol=1e-5, rtol=1e-5)
            assert torch.equal(greedy(model, inputs), stock_tokens)
    with fastervlm.apply(model, "fastv", layer=1, keep=1) as pruning:
        pruned = greedy(model, inputs)
    assert pruned.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    frames = int(inputs["video_grid_thw"][0, 0])
    assert [r.visual_tokens for r in pruning.records] == [frames] * 2


def test_fastv_scores_are_layer_k_minus_1_attention_with_mrope_and_qk_norms(family: str, model: torch.nn.Module) -> None:
    """FastV's score from the captured q/k (the layer's q/k norms, then the M-RoPE cos/sin) equals the eager
    attention row of the last prompt token in layer K-1, head mean, on the stock model's own forward."""
    from fastervlm.methods import create_pruner

    inputs = video_inputs(adapter(family, model), ["What is it?"], sizes=((60, 90),))
    visual = inputs["input_ids"] == model.config.video_token_id
    frames, patches = int(inputs["video_grid_thw"][0, 0]), int(visual.sum()) // int(inputs["video_grid_thw"][0, 0])
    with create_pruner("fastv", layer=2, keep=1).attach(model.model.language_model, visual, frames=frames,
                                                        num_patches=patches) as run, torch.no_grad():
        model(**inputs)
    model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa", "": "sdpa"})
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    expected = attentions[1][:, :, -1].mean(dim=1)[visual].view(1, -1)
    torch.testing.assert_close(run.scores, expected, rtol=0, atol=1e-6)
    assert run.kept_visual.shape == (1, frames)
