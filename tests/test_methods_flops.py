"""The analytic LLM prefill FLOPs against torch's FLOP counter on a real Llama, with and without FastV."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from fastervlm.flops import LLMGeometry, layer_flops, prefill_flops
from fastervlm.methods import create_pruner

FRAMES, PATCHES, TEXT = 4, 16, 9


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=53, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("eager")  # the counter sees the full n x n products, as the formula counts
    return model


def _counted(llama: LlamaForCausalLM, tokens: int, pruner=None) -> int:
    embeds = torch.randn(1, tokens, llama.config.hidden_size)
    visual = torch.zeros(1, tokens, dtype=torch.bool)
    visual[0, 4 : 4 + FRAMES * PATCHES] = True
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if pruner is None:
            llama(inputs_embeds=embeds, logits_to_keep=1)
        else:
            with pruner.attach(llama.model, visual, frames=FRAMES, num_patches=PATCHES):
                llama(inputs_embeds=embeds, logits_to_keep=1)
    return counter.get_total_flops()


def test_geometry_from_configs(llama):
    geometry = LLMGeometry.from_config(llama.config)
    assert geometry == LLMGeometry(hidden=48, intermediate=80, layers=4, heads=6, kv_heads=2, vocab=53, head_dim=8)
    as_dict = {"hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 4, "num_attention_heads": 6,
               "vocab_size": 53, "mm_hidden_size": 1024}
    assert LLMGeometry.from_config(as_dict).kv_heads == 6  # no num_key_value_heads: multi-head attention
    assert LLMGeometry.from_config({"text_config": as_dict}) == LLMGeometry.from_config(as_dict)


@pytest.mark.parametrize("tokens", [1, 17, 75])
def test_prefill_formula_equals_the_counted_flops(llama, tokens):
    assert prefill_flops(LLMGeometry.from_config(llama.config), tokens) == _counted(llama, tokens)


@pytest.mark.parametrize("method,settings", [("fastervlm", {"reduction": 0.75}), ("random", {"keep": 3}),
                                             ("pool", {"keep": 0}), ("none", {})])
def test_vision_methods_shorten_every_layer(llama, method, settings):
    geometry = LLMGeometry.from_config(llama.config)
    pruner = create_pruner(method, **settings)
    visual = pruner.kept_visual_tokens(FRAMES, PATCHES)
    flops = pruner.llm_prefill_flops(geometry, text_tokens=TEXT, frames=FRAMES, num_patches=PATCHES)
    assert flops == prefill_flops(geometry, TEXT + visual) == _counted(llama, TEXT + visual)


@pytest.mark.parametrize("settings", [{"keep": 3, "layer": 2}, {"keep": 3, "layer": 1}, {"layer": 3}])
def test_fastv_flops_equal_the_counted_flops(llama, settings):
    """First K layers on every token, the rest on the kept ones, plus the one attention row read at K-1."""
    geometry = LLMGeometry.from_config(llama.config)
    pruner = create_pruner("fastv", **settings)
    flops = pruner.llm_prefill_flops(geometry, text_tokens=TEXT, frames=FRAMES, num_patches=PATCHES)
    assert flops == _counted(llama, TEXT + FRAMES * PATCHES, pruner)
    full, kept = TEXT + FRAMES * PATCHES, TEXT + pruner.kept_visual_tokens(FRAMES, PATCHES)
    layer = pruner.layer
    assert flops - prefill_flops(geometry, full) == (4 - layer) * (layer_flops(geometry, kept) - layer_flops(geometry, full)) + 2 * 6 * 8 * full


def test_fastv_costs_more_than_fastervlm_at_the_same_token_count():
    geometry = LLMGeometry(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000, head_dim=128)
    budget = dict(text_tokens=60, frames=8, num_patches=256)
    fastervlm = create_pruner("fastervlm", reduction=0.9).llm_prefill_flops(geometry, **budget)
    fastv = create_pruner("fastv", reduction=0.9).llm_prefill_flops(geometry, **budget)
    full = create_pruner("none").llm_prefill_flops(geometry, **budget)
    assert fastervlm < fastv < full
    assert fastv > 2 / 32 * full  # two full layers alone
