"""VisionZip (arXiv 2412.04467): per frame, dominant patches by [CLS] attention, and the rest merged into a few
contextual tokens by the similarity of their keys.

With budget L per frame: dominant = round(L x dominant_ratio) (halves up), contextual = L - dominant.
1. The dominant patches have the highest score; they come first, in raster order.
2. The remaining R patches, in raster order, are compared by their keys at the feature layer (head mean, unit
   length). Every step-th one (step = max(1, R // contextual), the first `contextual` of them) is a target; every
   other joins the target its key is most similar to (cosine; the first target on ties). Contextual token =
   the target's features + the mean of its members' (the target alone when it has none), in target order.
Reference: dvlab-research/VisionZip, visionzip/clip_encoder.py (`forward`) and visionzip/utils.py (the keys);
docs/methods.md says where this departs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastervlm.methods.base import (
    CLS_SCORES,
    PATCH_KEYS,
    Selection,
    VisualTokens,
    check_fraction,
    keep_all_tokens,
    select_candidates,
    setting,
)
from fastervlm.methods.ranking import ImportanceScored
from fastervlm.methods.registry import register
from fastervlm.selection import descending_order, take_rows


def target_positions(remaining: int, contextual: int, device: torch.device) -> torch.Tensor:
    """Positions 0, step, 2 step, ... (the first `contextual`) in the list of remaining tokens: the targets."""
    return torch.arange(0, remaining, max(1, remaining // contextual), device=device)[:contextual]


def merge_contextual(features: torch.Tensor, keys: torch.Tensor, contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, R, C) remaining tokens and their (T, R, D) unit keys -> (T, contextual, C) contextual tokens and (T, R)
    the contextual token each remaining token went into."""
    frames, remaining, _ = features.shape
    is_target = torch.zeros(remaining, dtype=torch.bool, device=features.device)
    is_target[target_positions(remaining, contextual, features.device)] = True
    similarity = keys[:, ~is_target] @ keys[:, is_target].transpose(1, 2)  # (T, members, contextual)
    joins = similarity.argmax(dim=-1)
    sums = torch.zeros(frames, contextual, features.shape[-1], dtype=features.dtype, device=features.device)
    sums.scatter_add_(1, joins.unsqueeze(-1).expand(-1, -1, features.shape[-1]), features[:, ~is_target])
    counts = F.one_hot(joins, contextual).sum(dim=1).clamp(min=1).unsqueeze(-1)
    groups = torch.empty(frames, remaining, dtype=torch.long, device=features.device)
    groups[:, is_target] = torch.arange(contextual, device=features.device)
    groups[:, ~is_target] = joins
    return features[:, is_target] + sums / counts, groups


@register
@dataclass
class VisionZip(ImportanceScored):
    name = "visionzip"
    inputs = frozenset({CLS_SCORES, PATCH_KEYS})
    selects_patches = False
    summary = "[CLS] attention keeps dominant patches per frame; the rest merge into contextual tokens by key similarity"
    reference = "VisionZip, arXiv 2412.04467 (github.com/dvlab-research/VisionZip, visionzip/clip_encoder.py)"

    dominant_ratio: float = setting(54 / 64, "share of L kept as dominant patches, round(L x ratio); the rest are "
                                             "contextual tokens (the reference's 54 + 10 of 64)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.dominant_ratio, "visionzip's {dominant_ratio}", "{dominant_ratio}=0.84375")

    def split(self, keep: int) -> tuple[int, int]:
        """L -> (dominant, contextual) tokens per frame."""
        dominant = math.floor(keep * self.dominant_ratio + 0.5)
        return dominant, keep - dominant

    def select(self, tokens: VisualTokens) -> Selection:
        features = tokens.features
        frames, patches, width = features.shape
        keep = self.per_frame_budget(patches)
        if keep == patches:
            return keep_all_tokens(features)
        dominant, contextual = self.split(keep)
        order = descending_order(self.importance(tokens))
        kept = torch.sort(order[:, :dominant], dim=1).values
        if contextual == 0:
            return select_candidates(features, list(kept.unbind(0)))
        rest = torch.sort(order[:, dominant:], dim=1).values  # (T, R) raster order
        keys = tokens.require(PATCH_KEYS, self.name).float().mean(dim=1)  # (T, N, D) head mean
        merged, rest_groups = merge_contextual(take_rows(features.float(), rest),
                                               F.normalize(take_rows(keys, rest), dim=-1), contextual)
        frame_tokens = torch.cat([take_rows(features, kept), merged.to(features.dtype)], dim=1)  # (T, L, C)
        # a contextual token takes the place of its target, the first of its group in raster order
        targets = rest[:, target_positions(rest.shape[1], contextual, rest.device)]
        offsets = patches * torch.arange(frames, device=features.device)[:, None]
        source = (torch.cat([kept, targets], dim=1) + offsets).flatten()
        groups = torch.full((frames, patches), -1, dtype=torch.long, device=features.device)
        groups.scatter_(1, rest, rest_groups + dominant + keep * torch.arange(frames, device=features.device)[:, None])
        is_merged = torch.arange(keep, device=features.device) >= dominant
        return Selection(frame_tokens.reshape(-1, width), source, frames, patches,
                         merged=is_merged.repeat(frames), groups=groups.flatten())
