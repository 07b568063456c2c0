"""random: L patches per frame drawn uniformly at random, in raster order. A floor for any scoring method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastervlm.methods.base import EncodedVideo, VisionPruner, VisualSelection, check_whole_number, setting
from fastervlm.methods.registry import register
from fastervlm.selection import gather_tokens, topk_per_frame


@register
@dataclass
class RandomTokens(VisionPruner):
    name = "random"
    summary = "L patches per frame chosen uniformly at random (seeded), kept in raster order"

    seed: int = setting(0, "the same seed picks the same patches for every video, whatever the batch, device or dtype")

    def __post_init__(self) -> None:
        check_whole_number(self.seed, "random's {seed}", "{seed}=1")

    def select(self, encoded: EncodedVideo) -> VisualSelection:
        features = encoded.features
        frames, patches, _ = features.shape
        generator = torch.Generator().manual_seed(self.seed)  # on the CPU: the same draw on every device
        scores = torch.rand(frames, patches, generator=generator)
        indices = list(topk_per_frame(scores, self.per_frame_budget(patches)).to(features.device).unbind(0))
        return VisualSelection(gather_tokens(features, indices), indices, [len(i) for i in indices])
