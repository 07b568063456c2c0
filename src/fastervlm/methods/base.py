"""What every pruning method is: a name, where it acts, what it needs, its settings and the budget it enforces.

A method class declares everything callers need to know, so that no caller (CLI, web, bench, eval, show, the
engine) ever compares a method's name:
- `stage`: "vision" (chooses visual tokens before the projector, from the encoder's output) or "llm" (drops
  visual tokens inside the language model, FastV);
- `inputs`: what a vision-stage method reads from the encoder besides the patch features (`CLS_SCORES`, ...);
- `budget`: "per_frame" (L per frame, frames x L in all) or "unbudgeted" (the method takes no budget);
- `baseline`: the method keeps every token (the unpruned row of every table);
- `default`: the method that a budget alone selects (`--reduction 0.9` without `--method`);
- `selects_patches`: kept tokens are patches of the frame (`kept_indices` defined) rather than merged ones;
- `featured`: compared by default where a command compares methods (the seed table's FasterVLM and FastV);
- settings: the dataclass fields, each with a default and a help text (`setting(...)`).
Methods never import a model adapter or the engine.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.selection import resolve_keep

if TYPE_CHECKING:
    from fastervlm.flops import LLMGeometry

Stage = Literal["vision", "llm"]
Budget = Literal["per_frame", "unbudgeted"]

CLS_SCORES = "cls_scores"
"""Input: the [CLS] query's attention over each frame's patches at the feature layer, head mean, (T, N)."""
RECEIVED_SCORES = "received_scores"
"""Input: the mean attention each patch receives from every query of the feature layer, head mean, (T, N); for
encoders without a [CLS] token (computed from the layer's q/k in chunks, never as a full map)."""
PATCH_KEYS = "patch_keys"
"""Input: the feature layer's keys of the patches, per head, (T, H, N, D) (VisionZip merges by them)."""
PROJECTED = "projected"
"""Input: every candidate token after the projector, in the LLM's embedding space, (T, N, C_llm) (DivPrune compares
them). A method that reads it returns rows of it (`VisualSelection.projected`), which the engine does not project
again."""
ENCODER_INPUTS = (CLS_SCORES, RECEIVED_SCORES, PATCH_KEYS, PROJECTED)
"""Every input the engine can hand a vision-stage method besides the features."""
_INPUT_WORDS = {CLS_SCORES: "[CLS] attention scores", RECEIVED_SCORES: "received-attention scores",
                PATCH_KEYS: "patch keys of the feature layer", PROJECTED: "projected visual tokens"}

BUDGET_PARAMETERS = ("keep", "reduction")
"""The two spellings of the one budget that every pruning method takes (conventions.md)."""


def setting(default: Any, help: str, *, recorded_at_default: bool = True) -> Any:  # noqa: A002  (argparse's word)
    """A method setting: a dataclass field with its default and the help text `fastervlm methods` shows.

    recorded_at_default=False leaves the setting out of `Pruner.settings()` while it holds its default, so that a
    setting added to an existing method changes neither the configurations already recorded in run directories nor
    their folder names (fastervlm's `score`: a default run stays `fastervlm_r0.9`)."""
    return field(default=default, metadata={"help": help, "recorded_at_default": recorded_at_default})


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
    projected: torch.Tensor | None = None

    def require(self, name: str, method: str) -> torch.Tensor:
        """The input `name` (one of ENCODER_INPUTS), or a clear error when the engine did not hand it over."""
        value = getattr(self, name)
        if value is None:
            raise UnsupportedModelError(
                f"method {method!r} needs the {_INPUT_WORDS[name]}, which this model's adapter does not provide; "
                "choose another method (see `fastervlm methods`)."
            )
        return value

    def whole_video(self, inputs: Collection[str] = ENCODER_INPUTS) -> EncodedVideo:
        """The video as one frame of T x N tokens, frame after frame: what a budget over the whole video ranks.
        Only `inputs` (those the method reads) are carried over."""

        def flat(name: str) -> torch.Tensor | None:
            tensor = getattr(self, name)
            if name not in inputs or tensor is None:
                return None
            if name == PATCH_KEYS:  # (T, H, N, D) -> (1, H, T*N, D), the one input that is copied
                return tensor.transpose(0, 1).reshape(1, tensor.shape[1], -1, tensor.shape[3])
            return tensor.reshape(1, -1, *tensor.shape[2:])

        return EncodedVideo(self.features.reshape(1, -1, self.features.shape[-1]),
                            **{name: flat(name) for name in ENCODER_INPUTS})


@dataclass
class VisualSelection:
    """The visual tokens a vision-stage method hands to the projector.

    features: (K, C) kept tokens, frame after frame. kept_indices: one ascending tensor of patch indices per
    frame ([CLS] excluded), or None for methods that merge patches instead of selecting them (pool).
    tokens_per_frame: the tokens of each frame in `features`; they may differ between frames (a global budget).

    A method that both selects and merges (VisionZip) puts each frame's selected patches first (their indices in
    `kept_indices`) and its merged tokens after them (`merged_per_frame`); `merge_groups` says which patches each
    merged token averages, so that a picture can draw them (docs/methods.md).
    """

    features: torch.Tensor
    kept_indices: list[torch.Tensor] | None
    tokens_per_frame: list[int]
    merge_groups: list[torch.Tensor] | None = None
    """Per frame, an (N,) int64 tensor: for each patch, the frame's merged token it went into (0, 1, ... in the
    order of those tokens), -1 for a patch kept as itself or dropped. None when no token is merged this way."""
    projected: bool = False
    """The features are already in the LLM's embedding space (rows of `EncodedVideo.projected`): do not project."""

    @property
    def merged_per_frame(self) -> list[int]:
        """Tokens per frame that are not a single patch: all of them without kept_indices (pool), else those past
        the frame's kept indices (VisionZip's contextual tokens), else 0."""
        if self.kept_indices is None:
            return list(self.tokens_per_frame)
        return [count - len(kept) for count, kept in zip(self.tokens_per_frame, self.kept_indices)]


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

    def __post_init__(self) -> None:
        """Check the settings. Subclasses and mixins that check their own call `super().__post_init__()`."""

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

    def check_model(self, *, num_patches: int, llm_layers: int) -> None:
        """Refuse, before any work, a configuration this model cannot run: a budget above its `num_patches` per frame
        (LLM-stage methods also check their layer against `llm_layers`)."""
        self.per_frame_budget(num_patches)

    def settings(self) -> dict[str, Any]:
        """Everything that identifies this configuration, for JSON output and run directories (a setting declared
        `recorded_at_default=False` only when it differs from its default)."""
        quiet = {f.name: f.default for f in fields(self) if not f.metadata.get("recorded_at_default", True)}
        return {"method": self.name, **{k: v for k, v in asdict(self).items() if k not in quiet or v != quiet[k]}}

    @property
    def prunes(self) -> bool:
        """Whether a budget was given (a method without one keeps every token)."""
        return self.keep is not None or self.reduction is not None

    def kept_visual_tokens(self, frames: int, num_patches: int) -> int:
        """Visual tokens the LLM keeps (LLM-stage methods: from the pruning layer on): the table's "# Token".

        Every method keeps frames x L in total, whether per frame or over the whole video (conventions.md)."""
        return frames * self.per_frame_budget(num_patches)

    def llm_prefill_flops(self, geometry: LLMGeometry, *, text_tokens: int, frames: int, num_patches: int,
                          visual_tokens: int | None = None) -> int:
        """Analytic LLM prefill FLOPs with this method (fastervlm.flops; docs/flops.md): every layer sees the
        text tokens plus the visual tokens that reached the prompt (`visual_tokens`, as an answer reports them;
        default: the nominal frames x L). LLM-stage methods override this with their own schedule."""
        from fastervlm.flops import prefill_flops

        visual = self.kept_visual_tokens(frames, num_patches) if visual_tokens is None else visual_tokens
        return prefill_flops(geometry, text_tokens + visual)


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


SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds torch accepts (64 bits, signed or unsigned); a larger one overflows inside torch.manual_seed."""


def check_seed(value: Any, setting_name: str, example: str) -> None:
    """A seed: a whole number in SEED_RANGE; else a BudgetError showing `example`."""
    check_whole_number(value, setting_name, example)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise BudgetError(f"{setting_name} must fit in 64 bits, from -2**63 to 2**64 - 1 (got {value}), e.g. {example}.")


def check_fraction(value: Any, setting_name: str, example: str) -> None:
    """A method setting that must be a number between 0 and 1; else a BudgetError showing `example`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise BudgetError(f"{setting_name} must be a number between 0 and 1 (got {value!r}), e.g. {example}.")


def check_choice(value: Any, setting_name: str, example: str, choices: tuple[str, ...]) -> None:
    """A method setting that must be one of `choices`; else a BudgetError listing them and showing `example`."""
    if value not in choices:
        raise BudgetError(f"{setting_name} must be {' or '.join(choices)} (got {value!r}), e.g. {example}.")


def check_flag(value: Any, setting_name: str, example: str) -> None:
    """A method setting that must be true or false (not a number or a text that merely looks true)."""
    if not isinstance(value, bool):
        raise BudgetError(f"{setting_name} must be true or false (got {value!r}), e.g. {example}.")


def keep_all_tokens(features: torch.Tensor) -> VisualSelection:
    """Every patch of every frame, in order: the selection of no pruning (and of LLM-stage methods)."""
    frames, patches, width = features.shape
    every = torch.arange(patches, device=features.device)
    return VisualSelection(features.reshape(-1, width), [every] * frames, [patches] * frames)
