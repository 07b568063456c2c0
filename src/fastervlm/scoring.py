"""Attention scores computed from a layer's own queries and keys, without materialising its attention map.

FasterVLM (and VisPruner, VisionZip) need one row of an attention matrix, the [CLS] query's row in the vision
encoder's feature layer; FastV the last prompt token's row in LLM layer K-1. Computing softmax(q k^T / sqrt(d))
for that one query costs one (1 x d)(d x N) product per head, so the layer itself keeps running on
SDPA/flash attention, which returns no weights. Encoders without a [CLS] token rank patches by the attention
each one receives from all queries (`received_attention`): a column mean of the map, computed a block of query
rows at a time so that no N x N map per head is ever held.
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


def received_attention(queries: torch.Tensor, keys: torch.Tensor, scale: float, *, chunk: int = 128) -> torch.Tensor:
    """The mean attention each key receives from every query, head mean: (B, H, Q, D) x (B, H, S, D) -> (B, S), fp32.

    score[s] = mean over heads h and queries q of softmax_s'(q . k_s' * scale)[s]: every query's row is a full
    softmax over all S keys, so the scores of one sample sum to 1. Queries are taken `chunk` at a time, so at most
    B x H x chunk x S weights exist at once (VisPruner's score for encoders without [CLS], there read from the
    eager map as `attentions.mean(dim=-2)`, then the head mean).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 query (got {chunk})")
    contiguous = keys.to(torch.float32, memory_format=torch.contiguous_format).transpose(-1, -2)
    received = torch.zeros(keys.shape[:-1], dtype=torch.float32, device=keys.device)  # (B, H, S)
    for start in range(0, queries.shape[2], chunk):
        block = queries[:, :, start : start + chunk].float()
        received += (block @ contiguous * scale).softmax(dim=-1).sum(dim=2)
    return received.mean(dim=1) / queries.shape[2]


def received_patch_scores(
    queries: torch.Tensor, keys: torch.Tensor, scale: float, *, has_cls: bool, chunk: int = 128
) -> torch.Tensor:
    """The `received_scores` input of the methods: `received_attention` over every token of the feature layer
    (all of them query, [CLS] included when the encoder has one), then the [CLS] column dropped without
    renormalising, as `cls_patch_scores` drops CLS->CLS. (B, H, S, D) q and k -> (B, N), N = S - has_cls."""
    scores = received_attention(queries, keys, scale, chunk=chunk)
    return scores[:, 1:] if has_cls else scores
