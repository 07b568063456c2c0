"""FasterVLM (arXiv 2412.01818): keep the patches the vision encoder's [CLS] query attends to most."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastervlm.methods.base import VisionPruner, VisualSelection
from fastervlm.methods.registry import register
from fastervlm.selection import gather_tokens, topk_global, topk_per_frame


@register
@dataclass
class FasterVLM(VisionPruner):
    name = "fastervlm"
    needs_cls_scores = True
    summary = "[CLS] attention in the vision encoder ranks patches; top-L per frame (or 8L over the video) reach the LLM"

    global_budget: bool = False
    """Keep the best T*L patches over the whole video instead of L in every frame."""

    def select(self, features: torch.Tensor, cls_scores: torch.Tensor | None) -> VisualSelection:
        assert cls_scores is not None, "the adapter must compute [CLS] scores for fastervlm"
        frames, patches, _ = features.shape
        keep = self.per_frame_budget(patches)
        if self.global_budget:
            indices = topk_global(cls_scores, frames * keep)
        else:
            indices = list(topk_per_frame(cls_scores, keep).unbind(0))
        return VisualSelection(gather_tokens(features, indices), indices, [len(i) for i in indices])
