"""Opt-in: each sequence's attention computed alone, on its own keys, so that the attention part of a batched
answer does not depend on the batch.

In a left-padded batch, SDPA runs over the padded length with a mask; its kernels split and accumulate the keys in
blocks whose boundaries move with the padding, so a row's result differs in the last bits from the same row
answered alone (docs/evaluation.md, "What batching changes"). `row_attention` cuts each row's padding off and calls
transformers' own SDPA attention on that row as a batch of one would (no mask, causal in the prefill), which gives
the same bits as answering the row alone. It does nothing about the other batch-dependent op, the matrix products,
whose kernels choose their blocking by the number of rows; that part needs a batch of one.

Prompts are prefilled whole (`share_prefix=False`): a prompt prefilled on a cached prefix is refused.

    from fastervlm.models.attention import rows_alone
    with rows_alone(adapter.llm):          # registered under ROW_ATTENTION with transformers' AttentionInterface
        ...generate...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

ROW_ATTENTION = "fastervlm_rows"
"""The name the function is registered under (transformers' AttentionInterface and AttentionMaskInterface)."""


def row_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, one row at a time on the row's own keys: (B, H, q, D) -> (B, q, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, _, q_length, _ = query.shape
    if 1 < q_length < key.shape[2]:
        from fastervlm.errors import FasterVLMError

        raise FasterVLMError("rows_alone handles whole-prompt prefills and decoding steps, not a prompt prefilled on "
                             "a cached prefix: load the pipeline with share_prefix=False (--no-share-prefix).")
    if attention_mask is None and batch == 1:
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    rows = []
    for row in range(batch):
        start = _first_key(attention_mask, row)
        first_query = max(0, start - (key.shape[2] - q_length))  # in the prefill the padded queries go too
        out, _ = sdpa_attention_forward(module, query[row:row + 1, :, first_query:], key[row:row + 1, :, start:],
                                        value[row:row + 1, :, start:], None, **kwargs)
        rows.append(torch.cat([out.new_zeros(1, first_query, *out.shape[2:]), out], 1))  # padded queries: zeros
    return torch.cat(rows), None


def _first_key(mask: torch.Tensor | None, row: int) -> int:
    """The row's first key that is not padding (what the last query may attend to)."""
    if mask is None:
        return 0
    allowed = mask[row, 0, -1]
    allowed = allowed if allowed.dtype == torch.bool else allowed == 0
    return int(allowed.to(torch.int8).argmax())


def register() -> None:
    """Make ROW_ATTENTION an attention implementation transformers models can be set to (masks as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROW_ATTENTION, row_attention)
    AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)


@contextmanager
def rows_alone(model: Any) -> Iterator[None]:
    """Within the block the transformers `model` computes each row's attention alone (ROW_ATTENTION)."""
    register()
    before = model.config._attn_implementation
    model.set_attn_implementation(ROW_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
