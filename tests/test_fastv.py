"""FastV inside transformers' Llama: equal to the stock model when nothing is dropped, equal to an independent
full-length masked reference when tokens are dropped, on eager, SDPA and a flash-style 2-D-mask attention, with
a batch of left-padded prompts and the KV cache through generation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import repeat_kv

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.methods import create_pruner

FRAMES, PATCHES = 3, 16  # 48 visual tokens per prompt
PREFIX, SUFFIXES = 5, (4, 7)  # text before the video; text after it (differs per sample: left padding)
FLASH_LIKE = "fastervlm_test_2d_mask"  # no "flash" in the name: transformers would look for kernels


def _flash_like_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """flash-attention's contract on the CPU: a 2-D padding mask (or None) and bottom-right causal alignment."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    q_len, k_len = query.shape[2], key.shape[2]
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)[None, None]
    if attention_mask is not None:
        assert attention_mask.ndim == 2, "the flash mask interface hands over a 2-D padding mask"
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # padding rows: any finite output, never read
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(FLASH_LIKE, _flash_like_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(FLASH_LIKE, flash_attention_mask)
ATTENTIONS = ["eager", "sdpa", FLASH_LIKE]


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    """4 layers, grouped-query attention (4 heads, 2 KV heads)."""
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=512, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def batch(llama: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Two left-padded prompts: [text][FRAMES x PATCHES visual][text], visual embeddings unlike text ones."""
    generator = torch.Generator().manual_seed(1)
    visual_count = FRAMES * PATCHES
    length = PREFIX + visual_count + max(SUFFIXES)
    embeds = torch.zeros(len(SUFFIXES), length, llama.config.hidden_size)
    attention = torch.zeros(len(SUFFIXES), length, dtype=torch.long)
    visual = torch.zeros(len(SUFFIXES), length, dtype=torch.bool)
    table = llama.get_input_embeddings().weight.detach()
    for row, suffix in enumerate(SUFFIXES):
        ids = torch.randint(3, table.shape[0], (PREFIX + suffix,), generator=generator)
        text = table[ids]
        video = torch.randn(visual_count, table.shape[1], generator=generator) * 0.05
        sample = torch.cat([text[:PREFIX], video, text[PREFIX:]])
        start = length - len(sample)
        embeds[row, start:], attention[row, start:] = sample, 1
        visual[row, start + PREFIX : start + PREFIX + visual_count] = True
    return {"inputs_embeds": embeds, "attention_mask": attention, "visual": visual}


def _generate(llama: LlamaForCausalLM, batch: dict[str, torch.Tensor], attention: str, new_tokens: int):
    llama.set_attn_implementation(attention)
    with torch.no_grad():
        return llama.generate(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                              max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                              return_dict_in_generate=True, output_logits=True)


def _fastv_generate(llama, batch, attention, new_tokens, **settings):
    pruner = create_pruner("fastv", **settings)
    with pruner.attach(llama.model, batch["visual"], frames=FRAMES, num_patches=PATCHES) as run:
        out = _generate(llama, batch, attention, new_tokens)
    return out, run


@pytest.mark.parametrize("attention,settings", [(name, {}) for name in ATTENTIONS] + [
    ("sdpa", {"keep": PATCHES}), ("eager", {"reduction": 0.0, "layer": 1})])
def test_nothing_dropped_equals_the_stock_model(llama, batch, attention, settings):
    stock = _generate(llama, batch, attention, 4)
    fastv, run = _fastv_generate(llama, batch, attention, 4, **settings)
    assert run.keep.shape == batch["visual"].shape  # the machinery ran and kept every position
    assert torch.equal(fastv.sequences, stock.sequences)
    for ours, theirs in zip(fastv.logits, stock.logits):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def _masked_reference(llama, embeds, attention_mask, keep, layer, prompt_length):
    """Independent of FastV's code: every token at full length, eager, positions as generate gives them; layers
    >= `layer` may attend only to the kept prompt positions and to tokens after the prompt. Last-position logits."""
    llama.set_attn_implementation("eager")
    model = llama.model
    batch, length, _ = embeds.shape
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = model.rotary_emb(embeds, position_ids=positions)
    full = torch.ones(length, length, dtype=torch.bool).tril()[None] & attention_mask.bool()[:, None, :]
    kept = torch.zeros(batch, length, dtype=torch.bool)
    kept.scatter_(1, keep, True)
    kept[:, prompt_length:] = True
    pruned = full & kept[:, None, :]
    diagonal = torch.eye(length, dtype=torch.bool)  # rows with nothing to attend to (padding, dropped): unread

    def additive(allowed):
        return torch.zeros(batch, 1, length, length).masked_fill(~(allowed | diagonal)[:, None], torch.finfo(torch.float32).min)

    hidden = embeds
    with torch.no_grad():
        for index, block in enumerate(model.layers):
            mask = additive(pruned if index >= layer else full)
            hidden = block(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
        return llama.lm_head(model.norm(hidden))[:, -1]


@pytest.mark.parametrize("attention,layer", [("eager", 2), ("sdpa", 2), (FLASH_LIKE, 2), ("sdpa", 1), ("eager", 3)])
def test_prefill_and_first_decode_step_equal_the_masked_reference(llama, batch, attention, layer):
    keep = 3  # per frame -> R = 9 of 48 visual tokens
    out, run = _fastv_generate(llama, batch, attention, 2, keep=keep, layer=layer)
    prompt_length = batch["visual"].shape[1]
    visual_count = FRAMES * PATCHES
    assert run.keep.shape == (2, prompt_length - visual_count + FRAMES * keep)
    assert run.kept_visual.shape == (2, FRAMES * keep)

    prefill = _masked_reference(llama, batch["inputs_embeds"], batch["attention_mask"], run.keep, layer, prompt_length)
    torch.testing.assert_close(out.logits[0], prefill, rtol=0, atol=2e-5)

    first = out.sequences[:, :1]
    embeds = torch.cat([batch["inputs_embeds"], llama.get_input_embeddings()(first).detach()], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(first)], dim=1)
    decode = _masked_reference(llama, embeds, mask, run.keep, layer, prompt_length)
    torch.testing.assert_close(out.logits[1], decode, rtol=0, atol=2e-5)
    # pruning changed the answer's logits: the reference comparison is not vacuous
    stock = _generate(llama, batch, "eager", 1)
    assert (stock.logits[0] - out.logits[0]).abs().max() > 1e-3


def test_scores_are_layer_k_minus_1_attention_of_the_last_token(llama, batch):
    """The q/k-recomputed score ranks as eager attention weights of layer K-1 do (head mean, last query)."""
    layer, keep = 2, 5
    _, run = _fastv_generate(llama, batch, "sdpa", 1, keep=keep, layer=layer)
    llama.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = llama(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                           output_attentions=True).attentions
    row = attentions[layer - 1][:, :, -1].mean(dim=1)  # (B, S)
    expected = row[batch["visual"]].view(2, -1)
    torch.testing.assert_close(run.scores, expected, rtol=0, atol=1e-6)
    top = expected.argsort(dim=1, descending=True)[:, : FRAMES * keep].sort(dim=1).values
    assert torch.equal(run.kept_visual, top)
    kept_positions = batch["visual"].nonzero()[:, 1].view(2, -1).gather(1, top)
    assert all(set(kept.tolist()) <= set(row.tolist()) for kept, row in zip(kept_positions, run.keep))


def test_eager_sdpa_and_flash_like_agree_and_cache_lengths(llama, batch):
    layer, keep, new_tokens = 2, 4, 5
    outs = {name: _fastv_generate(llama, batch, name, new_tokens, keep=keep, layer=layer)[0] for name in ATTENTIONS}
    for name in ATTENTIONS[1:]:
        assert torch.equal(outs[name].sequences, outs["eager"].sequences), name
        for ours, theirs in zip(outs[name].logits, outs["eager"].logits):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    prompt_length = batch["visual"].shape[1]
    pruned_length = prompt_length - FRAMES * PATCHES + FRAMES * keep
    cached = new_tokens - 1  # the last generated token is never fed back
    for out in outs.values():
        lengths = [cache_layer.keys.shape[-2] for cache_layer in out.cache.layers]
        assert lengths == [prompt_length + cached] * layer + [pruned_length + cached] * (4 - layer)


def test_without_cache_equals_with_cache(llama, batch):
    """A forward without a KV cache over the prompt plus generated tokens: the last prompt token (not the newest
    token) ranks, so the pass keeps the prefill's tokens and gives the cached decoding step's logits."""
    cached, cached_run = _fastv_generate(llama, batch, "sdpa", 2, keep=2)
    first = cached.sequences[:, :1]
    embeds = torch.cat([batch["inputs_embeds"], llama.get_input_embeddings()(first).detach()], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(first)], dim=1)
    pruner = create_pruner("fastv", keep=2)
    with pruner.attach(llama.model, batch["visual"], frames=FRAMES, num_patches=PATCHES) as run, torch.no_grad():
        logits = llama(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(run.scores, cached_run.scores, rtol=0, atol=1e-6)
    assert torch.equal(run.kept_visual, cached_run.kept_visual)
    assert logits.shape[1] == cached_run.keep.shape[1] + 1  # layers >= K ran on the kept tokens only
    torch.testing.assert_close(logits[:, -2], cached.logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[:, -1], cached.logits[1], rtol=0, atol=1e-5)


def test_hooks_are_removed_even_on_error(llama, batch):
    hooks = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in llama.modules())  # noqa: E731
    before = hooks()
    pruner = create_pruner("fastv", keep=1)
    with pytest.raises(RuntimeError, match="boom"):
        with pruner.attach(llama.model, batch["visual"], frames=FRAMES, num_patches=PATCHES):
            assert hooks() > before
            raise RuntimeError("boom")
    assert hooks() == before


def test_bad_settings_and_inputs_are_clear_errors(llama, batch):
    with pytest.raises(BudgetError, match="layer"):
        create_pruner("fastv", layer=0)
    with pytest.raises(BudgetError, match="between 1 and 3"):
        create_pruner("fastv", layer=4).attach(llama.model, batch["visual"], frames=FRAMES, num_patches=PATCHES).__enter__()
    with pytest.raises(BudgetError, match="cannot keep"):
        create_pruner("fastv", keep=PATCHES).attach(llama.model, batch["visual"], frames=FRAMES + 1, num_patches=PATCHES).__enter__()
    uneven = batch["visual"].clone()
    uneven[0, uneven[0].nonzero()[0]] = False
    with pytest.raises(UnsupportedModelError, match="same number of visual tokens"):
        create_pruner("fastv", keep=2).attach(llama.model, uneven, frames=FRAMES, num_patches=PATCHES).__enter__()
    with pytest.raises(UnsupportedModelError, match="Llama-style decoder"):
        create_pruner("fastv").attach(llama, batch["visual"], frames=FRAMES, num_patches=PATCHES).__enter__()


# ----- on the original Video-LLaVA path (tiny checkpoint) --------------------------------------------------------
def test_video_llava_fastv(tiny_pipeline):
    from fastervlm.models.base import GenerationSettings

    generation = GenerationSettings(max_new_tokens=4)
    pixels = torch.randn(tiny_pipeline.num_frames, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    frames, patches = tiny_pipeline.num_frames, tiny_pipeline.num_patches
    none = tiny_pipeline.answer("What is moving?", pixels=pixels, method="none", generation=generation)
    keep_all = tiny_pipeline.answer("What is moving?", pixels=pixels, method="fastv", generation=generation)
    assert keep_all.output_ids == none.output_ids
    assert keep_all.visual_tokens == frames * patches
    pruned = tiny_pipeline.answer("What is moving?", pixels=pixels, method="fastv", keep=2, layer=3, generation=generation)
    assert pruned.visual_tokens == frames * 2
    assert pruned.prompt_tokens == none.prompt_tokens  # every visual token enters the LLM
    assert pruned.method == {"method": "fastv", "keep": 2, "reduction": None, "layer": 3}


def test_cli_answer_with_fastv(tiny_checkpoint, synthetic_video, capsys):
    from fastervlm.cli import main

    code = main(["answer", "--model", str(tiny_checkpoint), "--video", str(synthetic_video), "--question", "What moves?",
                 "--method", "fastv", "--reduction", "0.5", "--method-option", "layer=1", "--max-new-tokens", "2",
                 "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["visual_tokens"] == 8 * 32  # tiny: 8 frames x 64 patches, L = 32
    assert result["method"]["layer"] == 1


# ----- inside a transformers VLM's own generate (the transformers adapters' path) -------------------------------------
def test_transformers_video_llava_generate():
    """transformers' VideoLlavaForConditionalGeneration: the decoder is model.model.language_model, the visual
    positions are the <video> ids (8 frames x (4 patches + [CLS]))."""
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    frames, patches, video_id = 8, 4, 90
    clip = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16)
    text = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=92, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = VideoLlavaConfig(vision_config=clip, text_config=text, image_token_index=91, video_token_index=video_id,
                              vision_feature_layer=-2, vision_feature_select_strategy="default",
                              video_seq_length=frames * (patches + 1))
    torch.manual_seed(0)
    model = VideoLlavaForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(3, 80, (1, 6), generator=generator), torch.full((1, frames * (patches + 1)), video_id),
                     torch.randint(3, 80, (1, 5), generator=generator)], dim=1)
    inputs = dict(input_ids=ids, pixel_values_videos=torch.randn(1, frames, 3, 28, 28, generator=generator),
                  max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    decoder, visual = model.model.language_model, ids == video_id
    with torch.no_grad():
        stock = model.generate(**inputs)
        with create_pruner("fastv").attach(decoder, visual, frames=frames, num_patches=patches):
            same = model.generate(**inputs)
        with create_pruner("fastv", keep=1).attach(decoder, visual, frames=frames, num_patches=patches) as run:
            pruned = model.generate(**inputs)
    assert torch.equal(same.sequences, stock.sequences)
    torch.testing.assert_close(same.logits[0], stock.logits[0], rtol=0, atol=1e-6)
    assert run.kept_visual.shape == (1, frames)
    lengths = [layer.keys.shape[-2] for layer in pruned.cache.layers]
    assert lengths == [ids.shape[1] + 2] * 2 + [ids.shape[1] - frames * (patches + 1) + frames + 2] * 2


def test_a_layer_past_the_llm_is_refused_before_any_work(tiny_pipeline, tmp_path, capsys) -> None:
    from fastervlm.cli import main
    from fastervlm.errors import BudgetError

    layers = tiny_pipeline.adapter.llm_config.num_hidden_layers
    with pytest.raises(BudgetError, match=f"between 1 and {layers - 1} for this {layers}-layer LLM"):
        tiny_pipeline.check_method(tiny_pipeline.pruner("fastv", reduction=0.5, layer=layers))
    tiny_pipeline.check_method(tiny_pipeline.pruner("fastv", reduction=0.5, layer=layers - 1))
    code = main(["bench", "--methods", "fastv", "--method-option", f"fastv:layer={layers}", "--device", "cpu",
                 "--no-progress", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"bench fastv reduction=0.5 layer={layers}: fastv's layer K={layers}" in err and "--method-option layer=K" in err
    assert "bench:" not in err  # refused before the workers start: no progress bar was drawn
