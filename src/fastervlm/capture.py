"""One way to read what an attention layer computes anyway: the outputs of its q_proj and k_proj.

Forward hooks on the two projections keep (a slice of) their outputs while the layer itself runs unchanged, on
SDPA or flash attention, which return no attention weights. The vision encoders' feature layer uses it for the
[CLS] row (FasterVLM), the attention each patch receives, and the patch keys (VisionZip); FastV uses it in LLM
layer K-1 for the last prompt token's row. Each of those scores then costs one small product instead of a map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Slicer = Callable[[torch.Tensor], torch.Tensor]


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class QKCapture:
    """While open (`with QKCapture(attention) as qk:`), keeps the last q_proj and k_proj outputs of `attention`.

    query / keys: optional slicers applied to the (batch, tokens, width) outputs before they are kept (FastV keeps
    one query row). active: consulted at each call; nothing is kept while it returns False.
    """

    def __init__(
        self,
        attention: nn.Module,
        *,
        query: Slicer | None = _whole,
        keys: Slicer = _whole,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        for name in ("q_proj", "k_proj"):
            if not isinstance(getattr(attention, name, None), nn.Module):
                raise TypeError(f"{type(attention).__name__} has no {name}: cannot read its queries and keys")
        self.attention = attention
        self._slice_query, self._slice_keys, self._active = query, keys, active
        self.query: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> QKCapture:
        self.clear()
        if self._slice_query is not None:
            self._handles.append(self.attention.q_proj.register_forward_hook(self._keep_query))
        self._handles.append(self.attention.k_proj.register_forward_hook(self._keep_keys))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.query = self.keys = None

    def _keep_query(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._active():
            self.query = self._slice_query(output)

    def _keep_keys(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._active():
            self.keys = self._slice_keys(output)


def split_heads(projected: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(batch, tokens, heads * head_dim) projection output -> (batch, heads, tokens, head_dim)."""
    batch, tokens, width = projected.shape
    return projected.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)
