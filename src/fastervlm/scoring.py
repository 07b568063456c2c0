"""Attention rows computed from one query, without materialising any attention map.

Both methods need a single row of an attention matrix: FasterVLM the [CLS] query's row in the vision
encoder's feature layer, FastV the last prompt token's row in LLM layer K-1. Computing softmax(q k^T / sqrt(d))
for that one query costs one (1 x d)(d x N) product per head, so the layer itself keeps running on
SDPA/flash attention, which returns no weights.
"""

from __future__ import annotations

import torch


def attention_row(query: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of one query over all keys, per head: (B, H, D) x (B, H, S, D) -> (B, H, S), fp32."""
    # keys usually arrive as a transposed view of the layer's (B, S, H, D) projection; the product is several
    # times faster on a contiguous copy, which costs less than the product on the view. One copy does both the
    # fp32 cast and the layout (`.float()` alone keeps a view's strides, so fp16 keys were copied twice).
    contiguous = keys.to(torch.float32, memory_format=torch.contiguous_format)
    logits = torch.einsum("bhd,bhsd->bhs", query.float(), contiguous) * scale
    return logits.softmax(dim=-1)


def cls_patch_scores(cls_query: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """FasterVLM's score: the [CLS] row over the patch keys, CLS->CLS dropped without renormalising, head mean.

    cls_query: (B, H, D) the [CLS] token's query; keys: (B, H, 1 + N, D) with [CLS] first. Returns (B, N).
    """
    return attention_row(cls_query, keys, scale)[:, :, 1:].mean(dim=1)
