"""FasterVLM (arXiv 2412.01818): keep the patches the vision encoder's [CLS] query attends to most."""

from __future__ import annotations

from dataclasses import dataclass

from fastervlm.methods.base import CLS_SCORES, EncodedVideo, VisionPruner, VisualSelection, setting
from fastervlm.methods.registry import register
from fastervlm.selection import gather_tokens, topk_global, topk_per_frame


@register
@dataclass
class FasterVLM(VisionPruner):
    name = "fastervlm"
    inputs = frozenset({CLS_SCORES})
    default = True
    featured = True
    summary = "[CLS] attention in the vision encoder ranks patches; top-L per frame (or 8L over the video) reach the LLM"
    reference = "FasterVLM, arXiv 2412.01818 (github.com/Theia-4869/FasterVLM)"

    global_budget: bool = setting(False, "keep the best frames x L patches over the whole video instead of L per frame")

    def select(self, encoded: EncodedVideo) -> VisualSelection:
        scores = encoded.cls_scores
        assert scores is not None, "the engine computes [CLS] scores for methods whose inputs ask for them"
        frames, patches, _ = encoded.features.shape
        keep = self.per_frame_budget(patches)
        if self.global_budget:
            indices = topk_global(scores, frames * keep)
        else:
            indices = list(topk_per_frame(scores, keep).unbind(0))
        return VisualSelection(gather_tokens(encoded.features, indices), indices, [len(i) for i in indices])
