"""The inference path, written once for every model family, in stages with explicit values between them:

    encode(stream, pixels, inputs)               -> [VisualTokens]  each input's candidate tokens + what the method reads
    select(tokens, pruner)                       -> [Selection]     what each input keeps (or merges)
    project(stream, tokens, selections)          -> [KeptTokens]    those tokens in the LLM's space, with positions
    build_prompts(adapter, questions, kept)      -> [Prompt]        text around them (fastervlm.prompts)
    llm.generate(prompts, pruner, settings)      -> LLMOutput       prefill + decode (fastervlm.llm backends)

`run` goes straight down from pixels to `Answer`s; `ask` runs the last two on kept tokens made earlier (one
encoding asked many questions, several budgets selected from one encoding, questions of several videos batched).
A family supplies only its `ModelAdapter` and `VisualStream` (fastervlm.models.base).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.flops import LLMGeometry, prefill_flops
from fastervlm.frame_times import FrameTimes
from fastervlm.llm import LLMBackend, LLMOutput, TransformersLLM
from fastervlm.methods.registry import no_cls_error
from fastervlm.methods.base import CLS_SCORES, PATCH_KEYS, Pruner, Selection, VisionPruner, VisualTokens, \
    keep_all_tokens
from fastervlm.models.base import FRAME_CLS, GenerationSettings, ModelAdapter, VisualStream
from fastervlm.models.grid_stream import timed
from fastervlm.prompts import KeptTokens, build_prompts, check_answer_room
from fastervlm.selection import split_by_frame
from fastervlm.timing import StageTimer, time_to_first_token


@dataclass
class Answer:
    """One answered question: the text, what the LLM saw, what it cost, and where the time went."""

    text: str
    output_ids: list[int]
    visual_tokens: int
    kept_indices: list[list[int]] | None
    prompt_tokens: int
    timings: dict[str, float]
    method: dict[str, Any]
    frame_indices: list[int] | None = None
    tokens_per_frame: list[int] | None = None
    """Visual tokens of each frame in the prompt (they differ between frames under a global or adaptive budget)."""
    grid: tuple[int, int] | None = None
    """(rows, cols) of each frame's candidate tokens where the model picks them per input (Qwen-VL); None: a square
    of the model's N."""
    llm_prefill_flops: int | None = None
    """The analytic LLM prefill FLOPs of this prompt under the method, as if prefilled alone (docs/flops.md)."""
    merge_groups: list[list[int]] | None = None
    """Per frame, per patch: the visual token (over the answer, frame after frame) it was merged into, or -1."""
    prefix_tokens: int = 0
    """Prompt tokens taken from the shared prefix computed once per input and configuration (0: prefilled whole)."""
    computed_prefill_flops: int | None = None
    """The LLM prefill FLOPs this answer actually computed: its own tokens over the shared prefix, plus the prefix
    itself when this answer was the first on it (summed over a run: what the run computed)."""
    cls_scores: torch.Tensor | None = field(default=None, repr=False)
    """(T, N) [CLS] attention per frame when the method computed it (for pictures); not in JSON."""

    @property
    def time_to_first_token(self) -> float:
        """Seconds from preprocessed pixels to the first generated token."""
        return time_to_first_token(self.timings)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object: the text is under "answer"."""
        out = asdict(self)
        out.pop("cls_scores")
        return {"answer": out.pop("text"), **out}


# ----- checks before any work ----------------------------------------------------------------------------------------
def encoder_inputs(pruner: Pruner) -> frozenset[str]:
    """What the encoder must compute for this method besides the features (LLM-stage methods: nothing)."""
    return pruner.required_inputs() if pruner.stage == "vision" else frozenset()


def check_method(adapter: ModelAdapter, pruner: Pruner) -> None:
    """Refuse, before any work, a method this model cannot run: an input its stream does not provide (a
    [CLS]-based method without [CLS]), a budget above the patches per frame, FastV's layer past the LLM's depth."""
    check_inputs(adapter.stream, encoder_inputs(pruner), adapter.family, pruner.name)
    pruner.check_model(num_patches=adapter.num_patches, llm_layers=adapter.llm_config.num_hidden_layers)


def check_inputs(stream: VisualStream, inputs: frozenset[str], model: str, method: str) -> None:
    """Refuse a method whose inputs this stream cannot give."""
    missing = inputs - stream.provides
    if CLS_SCORES in missing:
        raise no_cls_error(model, type(getattr(stream, "feature_attention", lambda: stream)()).__name__, method)
    if PATCH_KEYS in missing:
        raise UnsupportedModelError(f"method {method!r} merges by the feature layer's patch keys, which do not line "
                                    f"up with {model}'s pooled video tokens.")
    if missing:
        raise UnsupportedModelError(f"method {method!r} needs {', '.join(sorted(missing))}, which {model} does not "
                                    "provide; choose another method (see `fastervlm methods`).")


# ----- the stages ----------------------------------------------------------------------------------------------------
def encode(stream: VisualStream, pixels: list[torch.Tensor] | torch.Tensor, inputs: frozenset[str] = frozenset(),
           timer: StageTimer | None = None, *, keep_cls: bool = False,
           times: list[FrameTimes | None] | None = None) -> list[VisualTokens]:
    """Preprocessed pixels, (T, 3, H, W) per input (or stacked (B, T, 3, H, W)), -> each input's candidate tokens
    with the `inputs` (methods.base names) a method reads; no attention map is ever formed. `times`: when each
    input's frames were taken (None: unknown), kept on its tokens."""
    if keep_cls and FRAME_CLS not in stream.provides:
        keep_cls = False
    tokens = stream.encode(list(pixels), inputs, timer, keep_cls=keep_cls, times=times)
    for item, when in zip(tokens, times or []):
        item.times = when
    return tokens


def select(tokens: list[VisualTokens], pruner: Pruner, timer: StageTimer | None = None) -> list[Selection]:
    """What each input keeps: a vision-stage method's choice, or every token (LLM-stage methods prune later)."""
    with timed(timer, "selection"):
        if pruner.stage == "vision":
            return [cast(VisionPruner, pruner).select(item) for item in tokens]
        return [keep_all_tokens(item.features) for item in tokens]


def project(stream: VisualStream, tokens: list[VisualTokens], selections: list[Selection],
            timer: StageTimer | None = None) -> list[KeptTokens]:
    """Selected tokens -> the LLM's space, per frame, in one projector call for the batch ([CLS] tokens in front of
    their frames where they are fed), with the positions and side features of their sources."""
    pieces: list[torch.Tensor] = []
    for item, selection in zip(tokens, selections):
        frames = list(selection.features.split(selection.tokens_per_frame))
        if item.cls_tokens is not None:
            cls_tokens = item.cls_tokens
            if selection.projected:  # tokens in the LLM's space already (DivPrune, HoliTom): their [CLS] too
                with timed(timer, "projector"):
                    cls_tokens = stream.project(cls_tokens)
            frames = [torch.cat([token[None], frame]) for token, frame in zip(cls_tokens, frames)]
        pieces.extend(frames)
    with timed(timer, "projector"):
        done = [s.projected for s in selections for _ in range(s.frames)]
        todo = [piece for piece, projected in zip(pieces, done) if not projected]
        fresh = iter(stream.project(torch.cat(todo)).split([len(p) for p in todo]) if todo else [])
        projected = [piece if is_done else next(fresh) for piece, is_done in zip(pieces, done)]
    trailing = stream.trailing_tokens()
    if trailing is not None and projected:
        trailing = trailing.to(device=projected[0].device, dtype=projected[0].dtype)
    kept, start = [], 0
    for item, selection in zip(tokens, selections):
        frames = projected[start : start + selection.frames]
        start += selection.frames
        kept.append(KeptTokens(
            frames, selection,
            positions=None if item.positions is None else item.positions.flatten(0, 1)[selection.source],
            position_span=item.position_span,
            side_features=tuple(side.flatten(0, 1)[selection.source] for side in item.side_features),
            trailing=trailing, cls_scores=item.cls_scores, frame_indices=item.frame_indices, times=item.times,
            grid=item.grid))
    return kept


def ask(adapter: ModelAdapter, kept: list[KeptTokens], questions: list[str], pruner: Pruner,
        settings: GenerationSettings, timer: StageTimer | None = None, llm: LLMBackend | None = None) -> list[Answer]:
    """The last two stages for a batch of prepared inputs, one question each: prompts, then one `generate` of the
    LLM backend (the adapter's transformers model by default).

    The inputs may be one input asked several questions (the same KeptTokens more than once) or several inputs.
    Each answer's timings are its share of this call (the batch's stages divided evenly); the work that made the
    kept tokens (`KeptTokens.seconds`) is the caller's to share out."""
    timer = timer or StageTimer(adapter.device)
    with torch.inference_mode():
        prompts = build_prompts(adapter, questions, kept)
        check_answer_room(adapter, prompts, settings.max_new_tokens)
        output = (llm or TransformersLLM(adapter)).generate(prompts, pruner, settings, timer)
    share = {stage: seconds / len(prompts) for stage, seconds in timer.seconds.items()}
    return [_answer(adapter, pruner, output, row, prompt.length, prompt.kept, share)
            for row, prompt in enumerate(prompts)]


def run(adapter: ModelAdapter, pixels: list[torch.Tensor] | torch.Tensor, questions: list[str], pruner: Pruner,
        settings: GenerationSettings, timer: StageTimer | None = None, llm: LLMBackend | None = None, *,
        times: list[FrameTimes | None] | None = None) -> list[Answer]:
    """Answer a batch, one question per input: the whole path, straight down (`times`: as for `encode`)."""
    timer = timer or StageTimer(adapter.device)
    check_method(adapter, pruner)
    with torch.inference_mode():
        pixels = [p.to(device=adapter.device, dtype=adapter.dtype) for p in pixels]
        tokens = encode(adapter.stream, pixels, encoder_inputs(pruner), timer, keep_cls=adapter.keep_cls, times=times)
        kept = project(adapter.stream, tokens, select(tokens, pruner, timer), timer)
    return ask(adapter, kept, questions, pruner, settings, timer, llm)


def _answer(adapter: ModelAdapter, pruner: Pruner, output: LLMOutput, row: int, length: int, kept: KeptTokens,
            timings: dict[str, float]) -> Answer:
    """One prompt's answer; an LLM-stage method reports what it kept from its pruning layer on."""
    ids = output.ids[row]
    selection = kept.selection
    visual_tokens, kept_indices = kept.tokens, kept.kept_indices
    if output.llm_kept is not None:
        visual_tokens = len(output.llm_kept[row])
        if not adapter.keep_cls:  # with [CLS] tokens among the visual ones, ranks are not patch indices
            kept_indices = split_by_frame(output.llm_kept[row], selection.frames, selection.patches)
    geometry = LLMGeometry.from_config(adapter.llm_config)
    flops = pruner.llm_prefill_flops(geometry, text_tokens=length - kept.tokens, frames=selection.frames,
                                     num_patches=selection.patches, visual_tokens=kept.tokens)
    prefix = output.shared_prefix[row]
    computed = flops
    if prefix:
        own = prefill_flops(geometry, length, cached=prefix)
        computed = own + (prefill_flops(geometry, prefix) if output.prefix_computed[row] else 0)
    scores = None if kept.cls_scores is None else kept.cls_scores.float().cpu()
    return Answer(adapter.decode(ids), ids, visual_tokens, kept_indices, length, dict(timings), pruner.settings(),
                  frame_indices=kept.frame_indices, tokens_per_frame=kept.tokens_per_frame, grid=kept.grid,
                  llm_prefill_flops=flops,
                  merge_groups=kept.merge_groups, prefix_tokens=prefix, computed_prefill_flops=computed,
                  cls_scores=scores)
