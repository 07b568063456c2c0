"""What every pruning method is: a name, where it acts, what it needs, its settings and the budget it enforces.

A method class declares everything callers need to know, so that no caller (CLI, web, bench, eval, show, the
engine) ever compares a method's name:
- `stage`: "vision" (chooses visual tokens before the projector, from the encoder's output) or "llm" (drops
  visual tokens inside the language model, FastV);
- `inputs`: what a vision-stage method reads from the encoder besides the patch features (`CLS_SCORES`, ...);
- `budget`: "per_frame" (L per frame, frames x L in all), "video" (frames x L in all, which the method itself
  spreads over the frames and may merge across them: the temporal methods), or "unbudgeted" (no budget);
- `baseline`: the method keeps every token (the unpruned row of every table);
- `default`: the method that a budget alone selects (`--reduction 0.9` without `--method`);
- `selects_patches`: kept tokens are patches of the frame (`kept_indices` defined) rather than merged ones;
- `featured`: compared by default where a command compares methods (the seed table's FasterVLM and FastV);
- settings: the dataclass fields, each with a default and a help text (`setting(...)`).
Methods never import a model adapter or the engine.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.selection import gather_tokens, resolve_keep

if TYPE_CHECKING:
    from fastervlm.flops import LLMGeometry

Stage = Literal["vision", "llm"]
Budget = Literal["per_frame", "video", "unbudgeted"]

CLS_SCORES = "cls_scores"
"""Input: the [CLS] query's attention over each frame's patches at the feature layer, head mean, (T, N)."""
RECEIVED_SCORES = "received_scores"
"""Input: the mean attention each patch receives from every query of the feature layer, head mean, (T, N); for
encoders without a [CLS] token (computed from the layer's q/k in chunks, never as a full map)."""
PATCH_KEYS = "patch_keys"
"""Input: the feature layer's keys of the patches, per head, (T, H, N, D) (VisionZip merges by them)."""
PROJECTED = "projected"
"""Input: every candidate token after the projector, in the LLM's embedding space, (T, N, C_llm) (DivPrune compares
them). A method that reads it returns rows of it (`Selection.projected`), which the engine does not project
again."""
ENCODER_INPUTS = (CLS_SCORES, RECEIVED_SCORES, PATCH_KEYS, PROJECTED)
"""Every input the engine can hand a vision-stage method besides the features."""
_INPUT_WORDS = {CLS_SCORES: "[CLS] attention scores", RECEIVED_SCORES: "received-attention scores",
                PATCH_KEYS: "patch keys of the feature layer", PROJECTED: "projected visual tokens"}

BUDGET_PARAMETERS = ("keep", "reduction")
"""The two spellings of the one budget that every pruning method takes."""


def setting(default: Any, help: str, *, recorded_at_default: bool = True) -> Any:  # noqa: A002  (argparse's word)
    """A method setting: a dataclass field with its default and the help text `fastervlm methods` shows.

    recorded_at_default=False leaves the setting out of `Pruner.settings()` while it holds its default, so that a
    setting added to an existing method changes neither the configurations already recorded in run directories nor
    their folder names (fastervlm's `score`: a default run stays `fastervlm_r0.9`)."""
    return field(default=default, metadata={"help": help, "recorded_at_default": recorded_at_default})


@dataclass
class VisualTokens:
    """One visual input (a video, or an image as one frame) as the engine hands it to a method: its candidate tokens
    on a grid, what the method asked the encoder for, and where each token sits in the LLM's positions.

    A "frame" is the model's temporal unit: an input frame for the LLaVA families, a temporal patch (two input
    frames) for Qwen-VL. Every frame of one input has the same rows x cols grid of candidates (N = rows x cols, the
    N of `reduction`), but N differs between inputs of a model that picks its resolution per video (Qwen-VL).
    Flat index k = frame x N + row x cols + col names a candidate everywhere (`Selection.source`, `groups`).

    features: (T, N, C) the candidate tokens per frame ([CLS] excluded).
    cls_scores .. projected: present when the method's `required_inputs()` ask for them (the input names above).
    """

    features: torch.Tensor
    cls_scores: torch.Tensor | None = None
    received_scores: torch.Tensor | None = None
    patch_keys: torch.Tensor | None = None
    projected: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    """(rows, cols) of each frame's candidates; None means a square grid (N a perfect square)."""
    positions: torch.Tensor | None = None
    """(T, N, P) each candidate's position in the LLM relative to the first position of the prompt slot that holds
    its frame (the family's prompt decides the slots: one per input, or one per frame), for a model with multi-axis
    positions (M-RoPE: P = 3, (t, h, w)); None: 1-D positions, consecutive over the prompt as it is after pruning."""
    position_span: int = 0
    """With `positions`: how far a slot shifts the positions of what follows it (the stock prompt's; pruning never
    changes it)."""
    side_features: tuple[torch.Tensor, ...] = ()
    """Per-token features the LLM takes besides the embeddings, (T, N, D) each (Qwen3-VL's DeepStack): a kept or
    merged token takes those of its `source`."""
    cls_tokens: torch.Tensor | None = None
    """(T, C) each frame's [CLS] token, fed in front of the frame's kept tokens where the family does (keep_cls)."""
    frame_indices: list[int] | None = None
    """The decoded frame numbers the input was sampled at (None for pixels given directly)."""
    times: Any = None
    """When the input's frames were taken (`fastervlm.frame_times.FrameTimes`), None when unknown: for prompts
    that state it (Qwen3-VL's timestamps)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of the work that made these tokens (decoding, the tower), for whoever shares it out."""

    @property
    def frames(self) -> int:
        return self.features.shape[0]

    @property
    def patches(self) -> int:
        """N: candidate tokens per frame."""
        return self.features.shape[1]

    @property
    def rows_cols(self) -> tuple[int, int]:
        """(rows, cols) of a frame's candidate grid; an error for a non-square N without a declared grid."""
        if self.grid is not None:
            return self.grid
        side = math.isqrt(self.patches)
        if side * side != self.patches:
            raise UnsupportedModelError(f"{self.patches} candidates per frame form no square grid, and the model "
                                        "declares none.")
        return side, side

    def coords(self) -> torch.Tensor:
        """(T x N, 3) long: (frame, row, col) of every candidate, in flat-index order."""
        rows, cols = self.rows_cols
        flat = torch.arange(self.frames * self.patches, device=self.features.device)
        within = flat % self.patches
        return torch.stack([flat // self.patches, within // cols, within % cols], dim=1)

    def require(self, name: str, method: str) -> torch.Tensor:
        """The input `name` (one of ENCODER_INPUTS), or a clear error when the engine did not hand it over."""
        value = getattr(self, name)
        if value is None:
            raise UnsupportedModelError(
                f"method {method!r} needs the {_INPUT_WORDS[name]}, which this model's adapter does not provide; "
                "choose another method (see `fastervlm methods`)."
            )
        return value

    def whole_video(self, inputs: Collection[str] = ENCODER_INPUTS) -> VisualTokens:
        """The video as one frame of T x N tokens, frame after frame: what a budget over the whole video ranks.
        Only `inputs` (those the method reads) are carried over."""

        def flat(name: str) -> torch.Tensor | None:
            tensor = getattr(self, name)
            if name not in inputs or tensor is None:
                return None
            if name == PATCH_KEYS:  # (T, H, N, D) -> (1, H, T*N, D), the one input that is copied
                return tensor.transpose(0, 1).reshape(1, tensor.shape[1], -1, tensor.shape[3])
            return tensor.reshape(1, -1, *tensor.shape[2:])

        return VisualTokens(self.features.reshape(1, -1, self.features.shape[-1]),
                            **{name: flat(name) for name in ENCODER_INPUTS}, grid=(1, self.frames * self.patches))


@dataclass
class Selection:
    """What a vision-stage method hands to the projector for one input: its tokens, and for each the candidate whose
    place it takes. Coordinates, LLM positions and side features of the tokens follow from `source`; callers
    never recompute them.

    A token is either a candidate kept as itself, or a merge of several candidates (VisionZip's contextual tokens,
    pool's rectangles, temporal merges across frames), which takes the place of one of them (`source`: the token it
    was merged into, or a representative one). Tokens come frame after frame by their source's frame; within a
    frame, in the method's order.
    """

    features: torch.Tensor
    """(K, C) the tokens, in prompt order."""
    source: torch.Tensor
    """(K,) long: the flat candidate index (frame x N + patch) whose coordinates and positions each token takes."""
    frames: int
    patches: int
    """T and N of the input the selection was made from."""
    merged: torch.Tensor | None = None
    """(K,) bool: True for a token that merges several candidates; None when every token is a single candidate."""
    groups: torch.Tensor | None = None
    """(T x N,) long: for each candidate, the token (0 .. K-1) it was merged into, -1 for one kept as itself or
    dropped; None when nothing was merged. A candidate averaged into several tokens (FastVID merges a segment into
    each of its anchor frames) names one of them, the method's docstring says which."""
    projected: bool = False
    """The features are already in the LLM's embedding space (rows of `VisualTokens.projected`): do not project."""
    keeps_patches: bool = True
    """Some tokens may be candidates kept as themselves (`kept_indices`); False for a method whose tokens are all
    merges by construction (pool), whose `kept_indices` is then None."""

    def __post_init__(self) -> None:
        frame_of = self.source // self.patches
        if len(frame_of) > 1 and bool((frame_of.diff() < 0).any()):
            raise ValueError("a selection's tokens must come frame after frame (by their source's frame)")

    @property
    def tokens_per_frame(self) -> list[int]:
        """Tokens of each frame (by source): they may differ between frames (global or frame-adaptive budgets)."""
        return torch.bincount(self.source // self.patches, minlength=self.frames).tolist()

    @property
    def kept_indices(self) -> list[torch.Tensor] | None:
        """Per frame, the ascending patch indices of the candidates kept as themselves; None for a method whose
        tokens are all merges (pool)."""
        if not self.keeps_patches:
            return None
        single = self.source if self.merged is None else self.source[~self.merged]
        single = torch.sort(single).values
        return [single[(single // self.patches) == frame] % self.patches for frame in range(self.frames)]

    @property
    def merged_per_frame(self) -> list[int]:
        """Tokens per frame that merge several candidates (all of them for pool, VisionZip's contextual tokens)."""
        if self.merged is None:
            return [0] * self.frames
        frame_of = self.source[self.merged] // self.patches
        return torch.bincount(frame_of, minlength=self.frames).tolist()


def select_candidates(candidates: torch.Tensor, indices: list[torch.Tensor], *, projected: bool = False) -> Selection:
    """(T, N, C) candidates and one ascending index tensor per frame -> the selection of those candidates."""
    frames, patches, _ = candidates.shape
    source = torch.cat([index + frame * patches for frame, index in enumerate(indices)])
    return Selection(gather_tokens(candidates, indices), source, frames, patches, projected=projected)


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

    def check_model(self, *, num_patches: int | None, llm_layers: int) -> None:
        """Refuse, before any work, a configuration this model cannot run: a budget above its `num_patches` per frame
        (LLM-stage methods also check their layer against `llm_layers`). With num_patches None (the model picks N
        per input) only the budget's form is checked here; its bound is checked as each input is selected."""
        if num_patches is None:  # any whole keep >= 0 fits some N: check the form against N = keep
            num_patches = self.keep if type(self.keep) is int and self.keep >= 0 else 0
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

        Every method keeps frames x L in total, per frame or over the whole video: at r = 0.9 every method reaches
        Video-LLaVA's LLM with 208 visual tokens, the seed table's "# Token" column."""
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

    def select(self, tokens: VisualTokens) -> Selection:
        """The tokens of one input that reach the projector."""
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


def check_number(value: Any, setting_name: str, example: str, low: float, high: float = math.inf, *,
                 low_included: bool = True) -> None:
    """A method setting that must be a number from `low` (excluded unless `low_included`) to `high`; else a
    BudgetError showing `example`."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not (low <= value if low_included else low < value) or not value <= high:
        bound = f"{'from' if low_included else 'above'} {low:g}" + ("" if high == math.inf else f" to {high:g}")
        raise BudgetError(f"{setting_name} must be a number {bound} (got {value!r}), e.g. {example}.")


def check_choice(value: Any, setting_name: str, example: str, choices: tuple[str, ...]) -> None:
    """A method setting that must be one of `choices`; else a BudgetError listing them and showing `example`."""
    if value not in choices:
        raise BudgetError(f"{setting_name} must be {' or '.join(choices)} (got {value!r}), e.g. {example}.")


def check_flag(value: Any, setting_name: str, example: str) -> None:
    """A method setting that must be true or false (not a number or a text that merely looks true)."""
    if not isinstance(value, bool):
        raise BudgetError(f"{setting_name} must be true or false (got {value!r}), e.g. {example}.")


def keep_all_tokens(features: torch.Tensor) -> Selection:
    """Every candidate of every frame, in order: the selection of no pruning (and of LLM-stage methods)."""
    frames, patches, width = features.shape
    source = torch.arange(frames * patches, device=features.device)
    return Selection(features.reshape(-1, width), source, frames, patches)
