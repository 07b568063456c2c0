"""What every pruning method is: a name, where it acts, what it needs, its settings and the budget it enforces.

A method class declares everything callers need to know, so that no caller (CLI, web, bench, eval, show, the
engine) ever compares a method's name:
- `stage`: "vision" (chooses visual tokens before the projector, from the encoder's output) or "llm" (drops
  visual tokens inside the language model, FastV);
- `inputs`: what a vision-stage method reads from the encoder besides the patch features (`CLS_SCORES`, ...);
- `budget`: "per_frame" (L per frame, frames x L in all) or "none" (the method takes no budget);
- `baseline`: the method keeps every token (the unpruned row of every table);
- `default`: the method that a budget alone selects (`--reduction 0.9` without `--method`);
- `selects_patches`: kept tokens are patches of the frame (`kept_indices` defined) rather than merged ones;
- `featured`: compared by default where a command compares methods (the seed table's FasterVLM and FastV);
- settings: the dataclass fields, each with a default and a help text (`setting(...)`).
Methods never import a model adapter or the engine.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from fastervlm.errors import BudgetError
from fastervlm.selection import resolve_keep

if TYPE_CHECKING:
    from fastervlm.flops import LLMGeometry

Stage = Literal["vision", "llm"]
Budget = Literal["per_frame", "none"]

CLS_SCORES = "cls_scores"
"""Input: the [CLS] query's attention over each frame's patches at the feature layer, head mean, (T, N)."""
RECEIVED_SCORES = "received_scores"
"""Input: the mean attention each patch receives from every query of the feature layer, head mean, (T, N); for
encoders without a [CLS] token (computed from the layer's q/k in chunks, never as a full map)."""
PATCH_KEYS = "patch_keys"
"""Input: the feature layer's keys of the patches, per head, (T, H, N, D) (VisionZip merges by them)."""
ENCODER_INPUTS = (CLS_SCORES, RECEIVED_SCORES, PATCH_KEYS)
"""Every input an encoder can hand a vision-stage method besides the features."""

BUDGET_PARAMETERS = ("keep", "reduction")
"""The two spellings of the one budget that every pruning method takes (conventions.md)."""


def setting(default: Any, help: str) -> Any:  # noqa: A002  (argparse's word for it)
    """A method setting: a dataclass field with its default and the help text `fastervlm methods` shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class EncodedVideo:
    """What the vision encoder hands a vision-stage method for one sample (a video, or an image as one frame).

    features: (T, N, C) the feature layer's candidate tokens per frame ([CLS] excluded).
    The others are present when the method's `required_inputs()` ask for them (see the input names above).
    """

    features: torch.Tensor
    cls_scores: torch.Tensor | None = None
    received_scores: torch.Tensor | None = None
    patch_keys: torch.Tensor | None = None


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
    inputs: ClassVar[frozenset[str]] = frozenset()
    budget: ClassVar[Budget] = "per_frame"
    baseline: ClassVar[bool] = False
    default: ClassVar[bool] = False
    selects_patches: ClassVar[bool] = True
    featured: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    """The paper (and reference code) the method follows."""

    keep: int | None = setting(None, "visual tokens kept per frame (L)")
    reduction: float | None = setting(None, "fraction of visual tokens dropped: L = round(N x (1 - reduction))")

    def required_inputs(self) -> frozenset[str]:
        """What this configuration reads from the encoder (a setting may change it)."""
        return self.inputs

    @property
    def needs_cls_scores(self) -> bool:
        """Whether the encoder must have a [CLS] token (and compute its attention) for this configuration."""
        return CLS_SCORES in self.required_inputs()

    def per_frame_budget(self, num_patches: int) -> int:
        """L for a model with `num_patches` patches per frame (all of them when no budget is set)."""
        return resolve_keep(num_patches, self.keep, self.reduction)

    def settings(self) -> dict[str, Any]:
        """Everything that identifies this configuration, for JSON output and run directories."""
        return {"method": self.name, **asdict(self)}

    @property
    def prunes(self) -> bool:
        """Whether a budget was given (a method without one keeps every token)."""
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

    def select(self, encoded: EncodedVideo) -> VisualSelection:
        """The tokens of one sample that reach the projector."""
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


def check_whole_number(value: Any, setting_name: str, example: str, minimum: int | None = None) -> None:
    """A method setting that must be an int (not a bool), at least `minimum`; else a BudgetError showing `example`
    (written with `{parameter}` names, e.g. "{layer}=2", so that the CLI can show its flags)."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise BudgetError(f"{setting_name} must be a whole number{bound} (got {value!r}), e.g. {example}.")


def keep_all_tokens(features: torch.Tensor) -> VisualSelection:
    """Every patch of every frame, in order: the selection of no pruning (and of LLM-stage methods)."""
    frames, patches, width = features.shape
    every = torch.arange(patches, device=features.device)
    return VisualSelection(features.reshape(-1, width), [every] * frames, [patches] * frames)
