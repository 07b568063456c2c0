"""What every pruning method is: a name, an attach point, its settings, and the budget it enforces.

Methods attach at one of two points that every model adapter exposes:
- "vision": before the projector. The adapter hands over the feature layer's patch tokens per frame (and the
  [CLS] scores when the method asks for them); the method returns the tokens the LLM will see.
- "llm": inside the language model (FastV). The adapter hands the LLM all visual tokens plus a mask of where
  they are; the method drops tokens from layer K on.
Methods never import an adapter.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from fastervlm.errors import BudgetError
from fastervlm.selection import resolve_keep

if TYPE_CHECKING:
    from fastervlm.flops import LLMGeometry

Stage = Literal["vision", "llm"]


@dataclass
class VisualSelection:
    """The visual tokens a vision-stage method hands to the projector.

    features: (K, C) kept tokens, frame after frame. kept_indices: one ascending tensor of patch indices per
    frame ([CLS] excluded), or None for methods that merge patches instead of selecting them (pool).
    """

    features: torch.Tensor
    kept_indices: list[torch.Tensor] | None
    tokens_per_frame: list[int]


@dataclass
class Pruner:
    """Base of all methods. `keep` is the per-frame budget L, `reduction` the same as a fraction dropped."""

    name: ClassVar[str] = ""
    stage: ClassVar[Stage] = "vision"
    needs_cls_scores: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    keep: int | None = None
    reduction: float | None = None

    def per_frame_budget(self, num_patches: int) -> int:
        """L for a model with `num_patches` patches per frame (all of them when no budget is set)."""
        return resolve_keep(num_patches, self.keep, self.reduction)

    def settings(self) -> dict[str, Any]:
        """Everything that identifies this configuration, for JSON output and run directories."""
        return {"method": self.name, **asdict(self)}

    @property
    def prunes(self) -> bool:
        return self.keep is not None or self.reduction is not None

    def kept_visual_tokens(self, frames: int, num_patches: int) -> int:
        """Visual tokens the LLM keeps (LLM-stage methods: from the pruning layer on): the table's "# Token".

        Every method keeps frames x L in total, whether per frame or over the whole video (conventions.md)."""
        return frames * self.per_frame_budget(num_patches)

    def llm_prefill_flops(self, geometry: LLMGeometry, *, text_tokens: int, frames: int, num_patches: int) -> int:
        """Analytic LLM prefill FLOPs with this method (fastervlm.flops; docs/flops.md): every layer sees the
        text tokens plus the kept visual tokens. LLM-stage methods override this with their own schedule."""
        from fastervlm.flops import prefill_flops

        return prefill_flops(geometry, text_tokens + self.kept_visual_tokens(frames, num_patches))


@dataclass
class VisionPruner(Pruner):
    """A method that chooses visual tokens before the projector."""

    stage: ClassVar[Stage] = "vision"

    def select(self, features: torch.Tensor, cls_scores: torch.Tensor | None) -> VisualSelection:
        """features: (T, N, C) patch tokens of one video; cls_scores: (T, N) or None."""
        raise NotImplementedError


@dataclass
class LLMPruner(Pruner):
    """A method that drops visual tokens inside the LLM. Every visual token reaches the LLM; the method
    installs itself in the decoder stack for one `generate` call."""

    stage: ClassVar[Stage] = "llm"

    def attach(
        self, decoder: torch.nn.Module, visual_mask: torch.Tensor, *, frames: int, num_patches: int
    ) -> AbstractContextManager[Any]:
        """Install inside `decoder` (a Llama-style model with .layers) for the calls made while the context is open.

        Adapters call it around `generate`: `with pruner.attach(llm.model, visual, frames=T, num_patches=N):`.
        visual_mask: (B, S) bool, True at the prompt's visual-token positions (S = padded prompt length, left
        padding allowed; the batch's 2-D attention_mask reaches the decoder as usual). frames and num_patches
        (patches per frame without [CLS]) turn the per-frame budget into the kept count frames x L. The context
        value may describe what the method decided (FastV: positions kept, scores).
        """
        raise NotImplementedError


def check_whole_number(value: Any, setting: str, example: str, minimum: int | None = None) -> None:
    """A method setting that must be an int (not a bool), at least `minimum`; else a BudgetError showing `example`."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise BudgetError(f"{setting} must be a whole number{bound} (got {value!r}), e.g. {example}.")


def keep_all_tokens(features: torch.Tensor) -> VisualSelection:
    """Every patch of every frame, in order: the selection of no pruning (and of LLM-stage methods)."""
    frames, patches, width = features.shape
    every = torch.arange(patches, device=features.device)
    return VisualSelection(features.reshape(-1, width), [every] * frames, [patches] * frames)
