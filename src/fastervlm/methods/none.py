"""No pruning: every patch of every frame reaches the LLM (the 0% baseline row)."""

from __future__ import annotations

from dataclasses import dataclass

from fastervlm.errors import BudgetError
from fastervlm.methods.base import VisualTokens, VisionPruner, Selection, keep_all_tokens
from fastervlm.methods.registry import register


@register
@dataclass
class NoPruning(VisionPruner):
    name = "none"
    budget = "unbudgeted"
    baseline = True
    summary = "no pruning: all patches of all frames reach the LLM"

    def __post_init__(self) -> None:
        if self.prunes:
            raise BudgetError("method 'none' keeps every token: drop {keep}/{reduction} or choose another method.")

    def select(self, encoded: VisualTokens) -> Selection:
        return keep_all_tokens(encoded.features)
