"""random: L patches per frame drawn uniformly at random, in raster order. A floor for any scoring method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastervlm.methods.base import VisualTokens, check_seed, setting
from fastervlm.methods.ranking import PatchSelector
from fastervlm.methods.registry import register
from fastervlm.selection import topk_per_frame


@register
@dataclass
class RandomTokens(PatchSelector):
    name = "random"
    summary = "L patches per frame chosen uniformly at random (seeded), kept in raster order"

    seed: int = setting(0, "the same seed picks the same patches for every video, whatever the batch, device or dtype")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seed(self.seed, "random's {seed}", "{seed}=1")

    def choose(self, pools: VisualTokens, keep: int) -> torch.Tensor:
        # One draw of T x N scores on the CPU, the same on every device: per frame it ranks each frame's patches,
        # as one pool (a global budget) the same numbers rank the whole video.
        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(pools.features.shape[:2], generator=generator)
        return topk_per_frame(scores, keep).to(pools.features.device)
