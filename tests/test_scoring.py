"""One attention row from one query equals the matching row of a full softmax attention computed independently."""

from __future__ import annotations

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv

from fastervlm.scoring import attention_row, cls_patch_scores


def test_cls_patch_scores_equal_the_cls_row_of_full_attention():
    generator = torch.Generator().manual_seed(0)
    batch, heads, tokens, width = 3, 4, 1 + 49, 8
    queries = torch.randn(batch, heads, tokens, width, generator=generator)
    keys = torch.randn(batch, heads, tokens, width, generator=generator)
    scale = width**-0.5
    full = torch.softmax(queries @ keys.transpose(-1, -2) * scale, dim=-1)  # (B, H, 1+N, 1+N)
    expected = full[:, :, 0, 1:].mean(dim=1)  # CLS row, CLS->CLS dropped, not renormalised, head mean
    scores = cls_patch_scores(queries[:, :, 0], keys, scale)
    assert scores.shape == (batch, tokens - 1)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    assert (scores.sum(dim=1) < 1).all()  # the CLS->CLS share is gone, not spread over the patches


def test_attention_row_is_the_last_row_of_a_causal_eager_layer():
    """FastV's score: the last query's row of an eager, causal Llama attention (RoPE, grouped KV heads)."""
    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         num_hidden_layers=1, vocab_size=10)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    layer = LlamaAttention(config, layer_idx=0).eval()
    tokens = 12
    hidden = torch.randn(2, tokens, config.hidden_size)
    positions = torch.arange(tokens)[None]
    cos, sin = LlamaRotaryEmbedding(config)(hidden, positions)
    causal = torch.full((tokens, tokens), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        _, weights = layer(hidden, position_embeddings=(cos, sin), attention_mask=causal)
        query = layer.q_proj(hidden).view(2, tokens, -1, layer.head_dim).transpose(1, 2)
        keys = layer.k_proj(hidden).view(2, tokens, -1, layer.head_dim).transpose(1, 2)
        query, keys = apply_rotary_pos_emb(query, keys, cos, sin)
        row = attention_row(query[:, :, -1], repeat_kv(keys, layer.num_key_value_groups), layer.scaling)
    torch.testing.assert_close(row, weights[:, :, -1], rtol=0, atol=1e-6)
    assert row.dtype == torch.float32


def test_half_precision_keys_in_a_transposed_view_are_copied_once():
    """The usual input on a GPU: fp16 keys as a (B, S, H, D) -> (B, H, S, D) view. One fp32 contiguous copy
    serves both the cast and the layout; the result equals the fp32 computation on the same values."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CopyCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.copies: list[int] = []  # sizes of the tensors copied

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(word in func.__name__ for word in ("copy", "clone", "contiguous")):
                self.copies.append(out.numel())
            return out

    generator = torch.Generator().manual_seed(0)
    projected = torch.randn(2, 30, 4, 16, generator=generator).half()  # (B, S, H, D), as a k_proj output viewed
    keys = projected.transpose(1, 2)
    query = torch.randn(2, 4, 16, generator=generator).half()
    with CopyCounter() as counter:
        row = attention_row(query, keys, 0.25)
    assert counter.copies.count(keys.numel()) == 1, counter.copies
    expected = attention_row(query.float(), keys.float().contiguous(), 0.25)
    torch.testing.assert_close(row, expected, rtol=0, atol=0)
    assert row.dtype == torch.float32
