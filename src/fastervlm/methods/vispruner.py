"""VisPruner (arXiv 2412.01818 v2, "Beyond Text-Visual Attention"): important patches by [CLS] attention, then
diverse ones from the rest by repeatedly dropping the most duplicated.

With budget L per pool (a frame, or the whole video with `global_budget`):
1. important = int(L x important_ratio) patches with the highest score are kept;
2. the others, in descending score order, are thinned to L - important: while more than that remain, split them
   by position into a (even positions, the last one included when the count is odd) and b (odd positions),
   score each a-token by its highest cosine similarity to any b-token, drop the r = min(8, excess) highest (or
   every a-token when there are fewer), and continue with the surviving a-tokens in descending similarity order
   followed by the b-tokens in their order (the reference's order).
Kept patches in raster order. Reference: Theia-4869/VisPruner, llava/model/llava_arch.py, `encode_images`;
docs/methods.md says where this departs from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastervlm.methods.base import CLS_SCORES, VisualTokens, check_fraction, setting
from fastervlm.methods.ranking import ImportanceScored, PatchSelector
from fastervlm.methods.registry import register
from fastervlm.selection import descending_order, take_rows

REMOVED_PER_STEP = 8
"""The most a-tokens one similarity step drops (the reference's constant)."""


def thin_by_similarity(cosine: torch.Tensor, remaining: torch.Tensor, target: int) -> torch.Tensor:
    """(P, M, M) cosine similarities of the tokens and (P, R) indices of the remaining ones -> (P, target) of them.

    Each step drops the a-tokens (even positions) most similar to some b-token (odd positions)."""
    if target == 0:
        return remaining[:, :0]
    while remaining.shape[1] > target:
        drop = min(REMOVED_PER_STEP, remaining.shape[1] - target)
        a, b = remaining[:, ::2], remaining[:, 1::2]
        a_to_b = torch.gather(take_rows(cosine, a), 2, b.unsqueeze(1).expand(-1, a.shape[1], -1))  # (P, |a|, |b|)
        survivors = descending_order(a_to_b.amax(dim=-1))[:, drop:]
        remaining = torch.cat([a.gather(1, survivors), b], dim=1)
    return remaining


@register
@dataclass
class VisPruner(ImportanceScored, PatchSelector):
    name = "vispruner"
    inputs = frozenset({CLS_SCORES})
    summary = "[CLS] attention keeps the important patches, then similarity removal keeps diverse ones of the rest"
    reference = "VisPruner, arXiv 2412.01818 v2 (github.com/Theia-4869/VisPruner, llava/model/llava_arch.py)"

    important_ratio: float = setting(0.5, "share of the budget kept by importance, int(L x ratio); the rest is "
                                          "chosen for diversity")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.important_ratio, "vispruner's {important_ratio}", "{important_ratio}=0.5")

    def choose(self, pools: VisualTokens, keep: int) -> torch.Tensor:
        important = int(keep * self.important_ratio)
        order = descending_order(self.importance(pools))
        unit = F.normalize(pools.features.float(), dim=-1)
        diverse = thin_by_similarity(unit @ unit.transpose(1, 2), order[:, important:], keep - important)
        return torch.sort(torch.cat([order[:, :important], diverse], dim=1), dim=1).values
