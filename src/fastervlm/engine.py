"""The inference path, written once for every model family, in stages with explicit values between them:

    encode(stream, pixels, pruner)       -> [Encoded]       features per frame + the scores the method needs
    select(encoded, pruner)              -> [VisualSelection] the tokens each sample keeps
    project(stream, encoded, selections) -> [Visual]        those tokens in the LLM's space, per frame
    build_prompts(adapter, questions, visuals) -> PromptBatch   text + visual embeddings, left-padded
    generate(adapter, prompts, pruner, settings) -> [Generated] greedy or sampled answers, KV-cached

`answer` runs them straight down. They are public so that callers can reuse a stage's value: encode a video
once and ask it many questions, batch many prompts, or select several budgets from one encoding. A family
supplies only its `ModelAdapter` and `VisualStream` (fastervlm.models.base).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from fastervlm.capture import QKCapture, split_heads
from fastervlm.errors import PromptTooLongError, UnsupportedModelError
from fastervlm.methods.base import (CLS_SCORES, PATCH_KEYS, PROJECTED, RECEIVED_SCORES, EncodedVideo, LLMPruner,
                                    Pruner, VisionPruner, VisualSelection, keep_all_tokens)
from fastervlm.models.base import GenerationSettings, ModelAdapter, VisualSlot, VisualStream
from fastervlm.models.generation import StepClock, generation_config, until_eos
from fastervlm.scoring import cls_patch_scores, received_patch_scores
from fastervlm.selection import split_by_frame
from fastervlm.timing import StageTimer


@dataclass
class Encoded:
    """One sample's encoder output: what a vision-stage method reads, plus each frame's [CLS] token where the
    family feeds it to the LLM (`keep_cls`)."""

    video: EncodedVideo
    cls_tokens: torch.Tensor | None = None


@dataclass
class Visual:
    """One sample's visual tokens in the LLM's space, after selection and the projector."""

    frames: list[torch.Tensor]
    """Projected tokens per frame, (K_t, D) each, the frame's [CLS] token first when it is fed."""
    kept_indices: list[list[int]] | None
    cls_scores: torch.Tensor | None = None
    trailing: torch.Tensor | None = None
    """(E, D) tokens the stock model appends after the sample's visual tokens (`VisualStream.trailing_tokens`)."""

    @property
    def tokens(self) -> int:
        """Visual tokens: those of the frames (trailing tokens are not among them)."""
        return sum(len(frame) for frame in self.frames)

    def item(self) -> torch.Tensor:
        """(tokens + E, D) everything the sample puts at its placeholders: the frames, then the trailing tokens."""
        return torch.cat(self.frames if self.trailing is None else [*self.frames, self.trailing])


@dataclass
class PromptBatch:
    """Left-padded prompt embeddings of a batch and where their visual tokens are."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    visual_mask: torch.Tensor
    lengths: list[int]


@dataclass
class Generated:
    """What the engine returns for one sample; the pipeline adds media timings and settings."""

    text: str
    output_ids: list[int]
    prompt_tokens: int
    visual_tokens: int
    kept_indices: list[list[int]] | None
    tokens_per_frame: list[int]
    """Visual tokens of each frame in the prompt (a global budget spends them unevenly; a fed [CLS] counts)."""
    llm_prefill_flops: int
    """The analytic LLM prefill FLOPs this answer reached (fastervlm.flops, the method's own schedule)."""
    cls_scores: torch.Tensor | None = None


def _timed(timer: StageTimer | None, stage: str) -> AbstractContextManager[Any]:
    return nullcontext() if timer is None else timer(stage)


# ----- encode ------------------------------------------------------------------------------------------------------
def encoder_inputs(pruner: Pruner) -> frozenset[str]:
    """What the encoder must compute for this method besides the features (LLM-stage methods: nothing)."""
    return pruner.required_inputs() if isinstance(pruner, VisionPruner) else frozenset()


def check_inputs(stream: VisualStream, inputs: frozenset[str], model: str, method: str) -> None:
    """Refuse, before any work, a method whose inputs this stream cannot give."""
    if CLS_SCORES in inputs and not stream.has_cls:
        raise no_cls_error(model, type(stream.feature_attention()).__name__, method)
    if PATCH_KEYS in inputs and not stream.has_candidate_keys:
        raise UnsupportedModelError(f"method {method!r} merges by the feature layer's patch keys, which do not line "
                                    f"up with {model}'s pooled video tokens.")


def no_cls_error(model: str, encoder: str, method: str) -> UnsupportedModelError:
    """The error for a [CLS]-based method on an encoder without [CLS]: says why, and which methods do apply."""
    from fastervlm.methods import has_setting, list_methods

    free = [name for name, cls in list_methods().items() if CLS_SCORES not in cls.inputs]
    instead = (f" Or let {method} rank patches by the attention they receive: score=received (on the command "
               "line: --method-option score=received)." if has_setting(method, "score") else "")
    return UnsupportedModelError(
        f"{model}'s vision encoder ({encoder}) has no [CLS] token, so method {method!r}, which ranks patches by "
        f"the [CLS] token's attention, cannot run on it. Methods that need no [CLS] token: {', '.join(free)}.{instead}"
    )


_FROM_QK = frozenset({CLS_SCORES, RECEIVED_SCORES, PATCH_KEYS})
"""Inputs read from the feature layer's queries and keys."""


def encode(
    stream: VisualStream,
    pixels: torch.Tensor,
    inputs: frozenset[str] = frozenset(),
    timer: StageTimer | None = None,
    *,
    keep_cls: bool = False,
) -> list[Encoded]:
    """(B, T, 3, S, S) pixels -> one Encoded per sample, with the `inputs` (methods.base names) computed from the
    feature layer's own q/k; no attention map is ever formed."""
    attention = stream.feature_attention() if inputs & _FROM_QK else None
    capture = QKCapture(attention, query=_query_rows(inputs)) if attention is not None else nullcontext()
    with _timed(timer, "vision_encoder"), capture:
        hidden = stream.hidden_states(pixels)
    batch, frames = hidden.shape[:2]
    found: dict[str, torch.Tensor] = {}
    if attention is not None:
        with _timed(timer, "cls_scoring"), torch.no_grad():  # a ranking only: never part of a gradient
            found = _scores(stream, attention, capture, inputs)
    with _timed(timer, "projector" if stream.candidates_projected else "vision_encoder"):
        features = stream.candidates(hidden)
    if PROJECTED in inputs:  # every candidate in the LLM's space, for methods that compare there (DivPrune)
        with _timed(timer, "projector"):
            found[PROJECTED] = stream.project(features.flatten(0, 1))
    cls = hidden[:, :, 0] if keep_cls and stream.feeds_cls and stream.has_cls else None
    per_sample = {name: value.unflatten(0, (batch, frames)) for name, value in found.items()}
    return [
        Encoded(EncodedVideo(features[i], **{name: value[i] for name, value in per_sample.items()}),
                None if cls is None else cls[i])
        for i in range(batch)
    ]


def _query_rows(inputs: frozenset[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Which queries of the feature layer to keep: all (received attention), the [CLS] row, or none (keys only)."""
    if RECEIVED_SCORES in inputs:
        return lambda queries: queries
    return (lambda queries: queries[:, :1]) if CLS_SCORES in inputs else None


def _scores(stream: VisualStream, attention: torch.nn.Module, capture: QKCapture, inputs: frozenset[str]) -> dict:
    """The requested inputs, (B*T, ...) each, from the feature layer's captured queries and keys."""
    head_dim = attention.head_dim
    keys = split_heads(capture.keys, head_dim)  # (B*T, H, tokens, D)
    first = 1 if stream.has_cls else 0
    found: dict[str, torch.Tensor] = {}
    if CLS_SCORES in inputs:
        query = split_heads(capture.query[:, :1], head_dim)[:, :, 0]
        found[CLS_SCORES] = stream.candidate_scores(cls_patch_scores(query, keys, attention.scale))
    if RECEIVED_SCORES in inputs:
        queries = split_heads(capture.query, head_dim)
        scores = received_patch_scores(queries, keys, attention.scale, has_cls=stream.has_cls)
        found[RECEIVED_SCORES] = stream.candidate_scores(scores)
    if PATCH_KEYS in inputs:
        found[PATCH_KEYS] = stream.candidate_keys(keys[:, :, first:])
    return found


# ----- select and project ------------------------------------------------------------------------------------------
def select(encoded: list[Encoded], pruner: Pruner, timer: StageTimer | None = None) -> list[VisualSelection]:
    """The tokens each sample keeps: a vision-stage method's choice, or every token (LLM-stage methods prune later)."""
    with _timed(timer, "selection"):
        if isinstance(pruner, VisionPruner):
            return [pruner.select(sample.video) for sample in encoded]
        return [keep_all_tokens(sample.video.features) for sample in encoded]


def project(
    stream: VisualStream, encoded: list[Encoded], selections: list[VisualSelection], timer: StageTimer | None = None
) -> list[Visual]:
    """Kept tokens -> the LLM's space, per frame, in one projector call for the batch ([CLS] tokens in front of
    their frames where they are fed)."""
    pieces: list[torch.Tensor] = []
    for sample, selection in zip(encoded, selections):
        frames = selection.features.split(selection.tokens_per_frame)
        if sample.cls_tokens is not None:
            frames = [torch.cat([token[None], frame]) for token, frame in zip(sample.cls_tokens, frames)]
        pieces.extend(frames)
    with _timed(timer, "projector"):
        projected = _project_pieces(stream, pieces, [s.projected for s in selections for _ in s.tokens_per_frame])
    trailing = stream.trailing_tokens()
    if trailing is not None and projected:
        trailing = trailing.to(device=projected[0].device, dtype=projected[0].dtype)
    visuals, start = [], 0
    for sample, selection in zip(encoded, selections):
        count = len(selection.tokens_per_frame)
        kept = None if selection.kept_indices is None else [idx.tolist() for idx in selection.kept_indices]
        visuals.append(Visual(list(projected[start : start + count]), kept, sample.video.cls_scores, trailing))
        start += count
    return visuals


def _project_pieces(stream: VisualStream, pieces: list[torch.Tensor], done: list[bool]) -> list[torch.Tensor]:
    """Each piece projected, in one projector call for those not in the LLM's space yet."""
    todo = [piece for piece, projected in zip(pieces, done) if not projected]
    fresh = iter(stream.project(torch.cat(todo)).split([len(piece) for piece in todo]) if todo else [])
    return [piece if projected else next(fresh) for piece, projected in zip(pieces, done)]


# ----- prompts and generation ----------------------------------------------------------------------------------------
def build_prompts(adapter: ModelAdapter, questions: list[str], visuals: list[Visual]) -> PromptBatch:
    """Each question's prompt with its sample's visual tokens at the slots, text embedded by the LLM's own table,
    left-padded into one batch."""
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    for question, visual in zip(questions, visuals):
        pieces, masks = [], []
        for piece in adapter.prompt(question):
            if isinstance(piece, VisualSlot):
                tokens = visual.frames[piece.first : piece.first + piece.count]
                pieces.extend(tokens)
                masks.extend(torch.ones(len(t), dtype=torch.bool) for t in tokens)
                if visual.trailing is not None and piece.first + piece.count == len(visual.frames):
                    pieces.append(visual.trailing)  # after the item's last frame; text to LLM-stage methods
                    masks.append(torch.zeros(len(visual.trailing), dtype=torch.bool))
            elif piece:
                pieces.append(adapter.embed(torch.tensor(piece, device=adapter.device)))
                masks.append(torch.zeros(len(piece), dtype=torch.bool))
        rows.append((torch.cat(pieces), torch.cat(masks)))
    check_context(adapter, [mask for _, mask in rows])
    return _left_padded(rows, adapter.device, adapter.dtype)


def check_context(adapter: ModelAdapter, visual_masks: list[torch.Tensor]) -> None:
    """Refuse a prompt longer than the LLM's context (it would be answered, silently wrong), naming its parts."""
    limit = adapter.max_context
    for sample, mask in enumerate(visual_masks):
        if limit is not None and len(mask) > limit:
            visual = int(mask.sum())
            raise PromptTooLongError(
                f"the prompt is {len(mask)} tokens ({visual} visual + {len(mask) - visual} text), longer than the "
                f"{limit} tokens {adapter.family}'s LLM was built for: ask a shorter question, or keep fewer visual "
                "tokens (a smaller keep, a larger reduction).", sample)


def check_answer_room(adapter: ModelAdapter, lengths: list[int], max_new_tokens: int) -> None:
    """Refuse a prompt whose answer could run past the LLM's context (it would be generated, silently wrong, at
    positions the model was never trained on): prompt + max_new_tokens must fit, naming both and the fixes."""
    limit = adapter.max_context
    for sample, length in enumerate(lengths):
        if limit is not None and length + max_new_tokens > limit:
            raise PromptTooLongError(
                f"the prompt is {length} tokens and its answer may take up to {max_new_tokens} more (max_new_tokens), "
                f"past the {limit} tokens {adapter.family}'s LLM was built for: lower max_new_tokens (--max-new-tokens) to "
                f"{max(limit - length, 0)} or less, ask a shorter question, or keep fewer visual tokens.", sample)


def _left_padded(rows: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, dtype: torch.dtype) -> PromptBatch:
    lengths = [len(embeds) for embeds, _ in rows]
    longest, width = max(lengths), rows[0][0].shape[-1]
    embeds = torch.zeros(len(rows), longest, width, device=device, dtype=dtype)
    attention = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    visual = torch.zeros(len(rows), longest, dtype=torch.bool, device=device)
    for row, (row_embeds, row_visual) in enumerate(rows):
        start = longest - len(row_embeds)
        embeds[row, start:] = row_embeds
        attention[row, start:] = 1
        visual[row, start:] = row_visual.to(device)
    return PromptBatch(embeds, attention, visual, lengths)


def llm_stage(pruner: Pruner, decoder: torch.nn.Module, visual_mask: torch.Tensor, frames: int,
              num_patches: int) -> AbstractContextManager[Any]:
    """An LLM-stage method (FastV) attached to the decoder for one call; nothing for vision-stage methods."""
    if not isinstance(pruner, LLMPruner):
        return nullcontext()
    return pruner.attach(decoder, visual_mask, frames=frames, num_patches=num_patches)


def generate(
    adapter: ModelAdapter, prompts: PromptBatch, pruner: Pruner, settings: GenerationSettings,
    timer: StageTimer | None = None,
) -> tuple[list[list[int]], torch.Tensor | None]:
    """transformers' generate on the prompt embeddings with the KV cache; the clock splits prefill from decode.

    Returns the generated ids per sample (up to EOS) and, for an LLM-stage method, the (B, R) ranks of the
    visual tokens it kept (else None)."""
    clock = StepClock(adapter.device)
    torch.manual_seed(settings.seed)
    clock.start()
    with llm_stage(pruner, adapter.decoder, prompts.visual_mask, adapter.num_frames, adapter.num_patches) as run:
        out = adapter.llm.generate(
            inputs_embeds=prompts.embeds,
            attention_mask=prompts.attention_mask,
            generation_config=generation_config(settings, adapter.tokenizer, adapter.generation_defaults),
            logits_processor=[clock],
        )
    if timer is not None:
        clock.report(timer)
    outputs = [until_eos(row.tolist(), adapter.tokenizer.eos_token_id) for row in out]
    return outputs, getattr(run, "kept_visual", None)


def answer(
    adapter: ModelAdapter, pixels: torch.Tensor, questions: list[str], pruner: Pruner, settings: GenerationSettings,
    timer: StageTimer | None = None,
) -> list[Generated]:
    """Answer a batch, one question per sample: pixels (B, T, 3, S, S). The whole path, straight down."""
    with torch.inference_mode():
        inputs = encoder_inputs(pruner)
        check_inputs(adapter.stream, inputs, adapter.family, pruner.name)
        pixels = pixels.to(device=adapter.device, dtype=adapter.dtype)
        encoded = encode(adapter.stream, pixels, inputs, timer, keep_cls=adapter.keep_cls)
        visuals = project(adapter.stream, encoded, select(encoded, pruner, timer), timer)
        return answer_visuals(adapter, visuals, questions, pruner, settings, timer)


def answer_visuals(
    adapter: ModelAdapter, visuals: list[Visual], questions: list[str], pruner: Pruner, settings: GenerationSettings,
    timer: StageTimer | None = None,
) -> list[Generated]:
    """The last two stages for a batch of projected samples, one question each: prompts, then one `generate`.

    The samples may come from one encoding asked several questions (the same `Visual` more than once) or from
    several videos; in fp32 greedy answers do not depend on the batch they were in (left padding, tested); in
    fp16/bf16 a padded batch sums attention in another order and can flip some (docs/evaluation.md)."""
    with torch.inference_mode():
        prompts = build_prompts(adapter, questions, visuals)
        check_answer_room(adapter, prompts.lengths, settings.max_new_tokens)
        outputs, llm_kept = generate(adapter, prompts, pruner, settings, timer)
    return [generated(adapter, pruner, ids, prompts.lengths[i], visuals[i], None if llm_kept is None else llm_kept[i])
            for i, ids in enumerate(outputs)]


def generated(adapter: ModelAdapter, pruner: Pruner, ids: list[int], length: int, visual: Visual,
              llm_kept: torch.Tensor | None) -> Generated:
    """One sample's result; an LLM-stage method reports what it kept from its pruning layer on."""
    from fastervlm.flops import LLMGeometry

    visual_tokens, kept = visual.tokens, visual.kept_indices
    if llm_kept is not None:
        visual_tokens = len(llm_kept)
        if not adapter.keep_cls:  # with [CLS] tokens among the visual ones, ranks are not patch indices
            kept = split_by_frame(llm_kept, adapter.num_frames, adapter.num_patches)
    flops = pruner.llm_prefill_flops(LLMGeometry.from_config(adapter.llm_config), text_tokens=length - visual.tokens,
                                     frames=adapter.num_frames, num_patches=adapter.num_patches,
                                     visual_tokens=visual.tokens)
    scores = None if visual.cls_scores is None else visual.cls_scores.float().cpu()
    return Generated(adapter.decode(ids), ids, length, visual_tokens, kept, [len(f) for f in visual.frames], flops,
                     scores)
