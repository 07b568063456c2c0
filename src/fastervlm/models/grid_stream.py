"""`encode` for the towers whose feature layer is an ordinary attention module (q_proj, k_proj) over one fixed
grid of patches per frame (CLIP, LanguageBind, SigLIP): every LLaVA family.

The tower runs to its feature layer once; while it runs, the layer's own q_proj/k_proj outputs are kept
(`capture.QKCapture`), so the [CLS] row, the attention each patch receives and the patch keys each cost one small
product instead of an attention map (`scoring`). A family subclass says where its pieces are and, if it pools
or projects before a method chooses, how scores and keys follow its candidates. Not an adapter (nothing registers
it), so adapters may import it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from fastervlm.capture import QKCapture, split_heads
from fastervlm.methods.base import CLS_SCORES, PATCH_KEYS, PROJECTED, RECEIVED_SCORES, VisualTokens
from fastervlm.models.base import FRAME_CLS, VisualStream
from fastervlm.scoring import cls_patch_scores, received_patch_scores
from fastervlm.timing import StageTimer

_FROM_QK = frozenset({CLS_SCORES, RECEIVED_SCORES, PATCH_KEYS})
"""Inputs read from the feature layer's queries and keys."""


def timed(timer: StageTimer | None, stage: str) -> AbstractContextManager[Any]:
    """`timer(stage)`, or nothing without a timer."""
    return nullcontext() if timer is None else timer(stage)


class GridStream(VisualStream):
    """A tower with a q_proj/k_proj feature layer and a fixed square grid of candidates per frame."""

    candidates_projected: bool = False
    """`candidates` are already in the LLM's space (the family projects before it pools, LLaVA-OneVision): then
    `project` is the identity and `candidates` is timed as the projector."""
    first_token_fed: bool
    """The stock model feeds the feature layer's first token (a CLIP tower's [CLS]) with each frame's patches."""

    @property
    @abstractmethod
    def has_cls(self) -> bool:
        """Whether the feature layer's first token is a [CLS] token (CLIP) rather than a patch (SigLIP)."""

    @abstractmethod
    def feature_attention(self) -> nn.Module:
        """The feature layer's self-attention (q_proj, k_proj, head_dim, scale): its q/k give the scores."""

    @abstractmethod
    def hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) pixels -> (B, T, tokens, C) output of the feature layer ([CLS] first when it has one)."""

    def candidates(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, tokens, C) feature-layer output -> (B, T, N, C) candidate tokens (here: the [CLS] token dropped)."""
        return hidden[:, :, 1:] if self.has_cls else hidden

    def candidate_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, T, patches) per-patch scores -> (B, T, N) per candidate, matching `candidates` (pooling families)."""
        return scores

    def candidate_keys(self, keys: torch.Tensor) -> torch.Tensor | None:
        """(B*T, H, patches, D) per-patch keys ([CLS] dropped) -> (B*T, H, N, D) per candidate, matching `candidates`;
        None for a family that merges patches into candidates without defining the merged token's key."""
        return keys

    @property
    def keys_defined(self) -> bool:
        """Whether `candidate_keys` gives every candidate a key (methods that read keys are refused otherwise)."""
        return True

    @property
    def provides(self) -> frozenset[str]:
        found = {RECEIVED_SCORES, PROJECTED}
        if self.has_cls:
            found.add(CLS_SCORES)
            if self.first_token_fed:
                found.add(FRAME_CLS)
        if self.keys_defined:
            found.add(PATCH_KEYS)
        return frozenset(found)

    def encode(self, pixels: list[torch.Tensor], inputs: frozenset[str], timer: StageTimer | None = None, *,
               keep_cls: bool = False, times: list[Any] | None = None) -> list[VisualTokens]:
        batch = torch.stack(pixels) if isinstance(pixels, list) else pixels
        attention = self.feature_attention() if inputs & _FROM_QK else None
        capture = QKCapture(attention, query=_query_rows(inputs)) if attention is not None else nullcontext()
        with timed(timer, "vision_encoder"), capture:
            hidden = self.hidden_states(batch)
        items, frames = hidden.shape[:2]
        found: dict[str, torch.Tensor] = {}
        if attention is not None:
            with timed(timer, "cls_scoring"), torch.no_grad():  # a ranking only: never part of a gradient
                found = self._scores(attention, capture, inputs)
        with timed(timer, "projector" if self.candidates_projected else "vision_encoder"):
            features = self.candidates(hidden)
        if PROJECTED in inputs:  # every candidate in the LLM's space, for methods that compare there (DivPrune)
            with timed(timer, "projector"):
                found[PROJECTED] = self.project(features.flatten(0, 1))
        cls = hidden[:, :, 0] if keep_cls and FRAME_CLS in self.provides else None
        per_item = {name: value.unflatten(0, (items, frames)) for name, value in found.items()}
        return [VisualTokens(features[i], **{name: value[i] for name, value in per_item.items()},
                             cls_tokens=None if cls is None else cls[i])
                for i in range(items)]

    def _scores(self, attention: nn.Module, capture: QKCapture, inputs: frozenset[str]) -> dict[str, torch.Tensor]:
        """The requested inputs, (B*T, ...) each, from the feature layer's captured queries and keys."""
        head_dim = attention.head_dim
        keys = split_heads(capture.keys, head_dim)  # (B*T, H, tokens, D)
        found: dict[str, torch.Tensor] = {}
        if CLS_SCORES in inputs:
            query = split_heads(capture.query[:, :1], head_dim)[:, :, 0]
            found[CLS_SCORES] = self.candidate_scores(cls_patch_scores(query, keys, attention.scale))
        if RECEIVED_SCORES in inputs:
            queries = split_heads(capture.query, head_dim)
            scores = received_patch_scores(queries, keys, attention.scale, has_cls=self.has_cls)
            found[RECEIVED_SCORES] = self.candidate_scores(scores)
        if PATCH_KEYS in inputs:
            found[PATCH_KEYS] = self.candidate_keys(keys[:, :, 1 if self.has_cls else 0:])
        return found


def _query_rows(inputs: frozenset[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Which queries of the feature layer to keep: all (received attention), the [CLS] row, or none (keys only)."""
    if RECEIVED_SCORES in inputs:
        return lambda queries: queries
    return (lambda queries: queries[:, :1]) if CLS_SCORES in inputs else None
