"""What the patch-choosing methods share, written once: the budget over frames or over the whole video, and the
choice of importance score.

- `PatchSelector`: a method that keeps whole patches (rows of the features, or of the projected tokens when it
  reads those). It states its choice for one pool of tokens (`choose`); the pool is each frame (L per frame) or,
  with the `global_budget` setting, the whole video as one pool of T x N tokens (frames x L in all, so frames
  may keep different counts; `tokens_per_frame` says how many).
- `ImportanceScored`: a method that ranks patches by importance. Its `score` setting says which: the [CLS]
  query's attention (`cls`, the default) or the attention each patch receives from all queries (`received`, for
  encoders without [CLS]); `required_inputs()` asks the engine for that one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastervlm.methods.base import (
    CLS_SCORES,
    PROJECTED,
    RECEIVED_SCORES,
    VisualTokens,
    VisionPruner,
    Selection,
    select_candidates,
    check_choice,
    check_flag,
    setting,
)
from fastervlm.selection import indices_per_frame

SCORES = {"cls": CLS_SCORES, "received": RECEIVED_SCORES}
"""The values of the `score` setting and the input each one reads."""


@dataclass
class PatchSelector(VisionPruner):
    """A method that keeps whole patches of the frames, chosen per frame or over the whole video."""

    global_budget: bool = setting(False, "spend frames x L patches over the whole video instead of L per frame")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag(self.global_budget, f"{self.name}'s {{global_budget}}", "{global_budget}=true")

    def choose(self, pools: VisualTokens, keep: int) -> torch.Tensor:
        """(P, keep) ascending indices: the `keep` tokens kept in each of the P pools of `pools` (its frames).

        Called only with 0 < keep < tokens per pool (keeping none or all needs no choice)."""
        raise NotImplementedError

    def select(self, tokens: VisualTokens) -> Selection:
        projected = PROJECTED in self.required_inputs()  # kept rows come from the projected tokens (DivPrune)
        candidates = tokens.require(PROJECTED, self.name) if projected else tokens.features
        frames, patches, _ = candidates.shape
        keep = self.per_frame_budget(patches)
        if keep == patches:
            indices = [torch.arange(patches, device=candidates.device)] * frames
        elif keep == 0:
            indices = [torch.zeros(0, dtype=torch.long, device=candidates.device)] * frames
        elif self.global_budget:
            whole = tokens.whole_video(self.required_inputs())
            indices = indices_per_frame(self.choose(whole, frames * keep)[0], frames, patches)
        else:
            indices = list(self.choose(tokens, keep).unbind(0))
        return select_candidates(candidates, indices, projected=projected)


@dataclass
class ImportanceScored(VisionPruner):
    """A method that ranks patches by an attention score of the feature layer, [CLS] or received."""

    score: str = setting("cls", "what ranks the patches: cls (the [CLS] query's attention) or received (the mean "
                                "attention each patch receives from all queries; for encoders without [CLS])",
                         recorded_at_default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.score, f"{self.name}'s {{score}}", "{score}=received", tuple(SCORES))

    def required_inputs(self) -> frozenset[str]:
        """The class's inputs with its [CLS] scores replaced by the score this configuration ranks by."""
        return (super().required_inputs() - {CLS_SCORES}) | {SCORES[self.score]}

    def importance(self, tokens: VisualTokens) -> torch.Tensor:
        """(T, N) the scores that rank the patches, higher is more important."""
        return tokens.require(SCORES[self.score], self.name)
