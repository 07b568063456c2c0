"""FasterVLM (arXiv 2412.01818 v1): keep the patches the vision encoder's [CLS] query attends to most."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastervlm.methods.base import CLS_SCORES, VisualTokens
from fastervlm.methods.ranking import ImportanceScored, PatchSelector
from fastervlm.methods.registry import register
from fastervlm.selection import topk_per_frame


@register
@dataclass
class FasterVLM(ImportanceScored, PatchSelector):
    name = "fastervlm"
    inputs = frozenset({CLS_SCORES})
    default = True
    featured = True
    summary = "[CLS] attention in the vision encoder ranks patches; top-L per frame (or 8L over the video) reach the LLM"
    reference = "FasterVLM, arXiv 2412.01818 (github.com/Theia-4869/FasterVLM)"

    def choose(self, pools: VisualTokens, keep: int) -> torch.Tensor:
        return topk_per_frame(self.importance(pools), keep)
