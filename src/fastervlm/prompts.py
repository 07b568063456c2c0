"""The prompt stage: each question's text around its input's kept tokens, as LLM input embeddings with positions.

What reaches the prompt from one input under one configuration is a `KeptTokens` (the engine's `project` stage
makes it). `build_prompts` turns (question, KeptTokens) pairs into `Prompt`s, unpadded, one per question:
- text pieces are embedded with the LLM's own table; the kept tokens go at the adapter's `VisualSlot`s, each
  frame's [CLS] in front of its tokens where it is fed, trailing tokens (OneVision's newline) after the last frame;
- positions: 1-D models count every token of the prompt as it is after pruning (0, 1, 2, ...); models with
  multi-axis positions (M-RoPE) give each kept token its stock (t, h, w) position within its slot and shift what
  follows a slot by the stock span, so the text keeps the positions it has without pruning;
- everything up to the end of the last slot does not depend on the question: it is the prompt's shared prefix,
  which the LLM stage computes once for every question on the same KeptTokens (`fastervlm.llm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fastervlm.errors import PromptTooLongError
from fastervlm.methods.base import Selection
from fastervlm.models.base import ModelAdapter, VisualSlot


@dataclass
class KeptTokens:
    """One input's visual tokens in the LLM's space under one configuration: what its prompts take. Ask it any
    number of questions; the LLM stage keeps the prompt prefix it computed for it (`prefix_cache`)."""

    frames: list[torch.Tensor]
    """(K_t, D) tokens per frame, the frame's [CLS] token first when it is fed."""
    selection: Selection
    """What the method chose (on the candidates' grid): kept indices, merges and sources follow from it."""
    positions: torch.Tensor | None = None
    """(K, P) stock positions of the selection's tokens relative to the first position of the prompt slot that
    holds them (M-RoPE), or None for 1-D positions."""
    position_span: int = 0
    """With `positions`: how far each slot shifts the positions of what follows it (the stock prompt's)."""
    side_features: tuple[torch.Tensor, ...] = ()
    """(K, D) per-token features besides the embeddings (Qwen3-VL's DeepStack), of the selection's tokens."""
    trailing: torch.Tensor | None = None
    """(E, D) tokens the stock model appends after the input's visual tokens (`VisualStream.trailing_tokens`)."""
    cls_scores: torch.Tensor | None = None
    """(T, N) [CLS] attention per frame when the method computed it (pictures)."""
    frame_indices: list[int] | None = None
    """The decoded frame numbers the input was sampled at (None for pixels given directly)."""
    grid: tuple[int, int] | None = None
    """(rows, cols) of each frame's candidates when the model declares it (it picks them per input); None: square."""
    times: Any = None
    """When the input's frames were taken (`fastervlm.frame_times.FrameTimes`), None when unknown: for prompts that
    state it (Qwen3-VL's per-frame timestamps)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of the work that made these tokens and is shared by their questions (decode, tower, selection,
    projector)."""
    prefix_cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """The LLM stage's computed prompt prefix for these tokens (fastervlm.llm), kept while the tokens live."""

    @property
    def tokens(self) -> int:
        """Visual tokens: those of the frames (trailing tokens are not among them)."""
        return sum(len(frame) for frame in self.frames)

    def item(self) -> torch.Tensor:
        """(tokens + E, D) everything the input puts at its placeholders: the frames, then the trailing tokens."""
        return torch.cat(self.frames if self.trailing is None else [*self.frames, self.trailing])

    @property
    def tokens_per_frame(self) -> list[int]:
        """Visual tokens of each frame in the prompt (a fed [CLS] counts)."""
        return [len(frame) for frame in self.frames]

    @property
    def kept_indices(self) -> list[list[int]] | None:
        """Per frame, the sorted patch indices kept as themselves; None when every token is a merge (pool)."""
        kept = self.selection.kept_indices
        return None if kept is None else [index.tolist() for index in kept]

    @property
    def merge_groups(self) -> list[list[int]] | None:
        """Per frame, per patch: the visual token (0 .. tokens - 1 over the input, frame after frame, a fed [CLS]
        counted) it was merged into, or -1 (kept as itself, or dropped); None when nothing was merged."""
        selection = self.selection
        if selection.groups is None:
            return None
        fed_cls = torch.tensor([len(f) - n for f, n in zip(self.frames, selection.tokens_per_frame)]).cumsum(0)
        token_frame = (selection.source // selection.patches).cpu()
        groups = selection.groups.cpu()
        shifted = torch.where(groups >= 0, groups + fed_cls[token_frame[groups.clamp(min=0)]], groups)
        return shifted.view(selection.frames, selection.patches).tolist()


@dataclass
class Prompt:
    """One question's prompt, unpadded: what the LLM stage prefills."""

    embeds: torch.Tensor
    """(S, D) input embeddings."""
    positions: torch.Tensor
    """(S,) 1-D positions, or (P, S) multi-axis ones."""
    visual_mask: torch.Tensor
    """(S,) True at the visual tokens (trailing tokens are text to LLM-stage methods)."""
    prefix_length: int
    """Tokens up to the end of the last visual slot: the same for every question on `kept`."""
    kept: KeptTokens
    side_features: tuple[torch.Tensor, ...] = ()
    """(V, D) per feature set, at the visual tokens in order."""

    @property
    def length(self) -> int:
        return len(self.embeds)

    @property
    def next_position(self) -> int:
        """The position of the first generated token: one past the last prompt token's, as transformers' generate
        continues (the prompt ends with text, whose axes agree; with M-RoPE a video's temporal positions may reach
        past it, Qwen2.5-VL's do)."""
        return int(self.positions[..., -1].max()) + 1


def build_prompts(adapter: ModelAdapter, questions: list[str], kept: list[KeptTokens]) -> list[Prompt]:
    """Each question's prompt with its input's kept tokens at the slots; refused when it does not fit the LLM."""
    prompts = [_prompt(adapter, question, tokens) for question, tokens in zip(questions, kept)]
    check_context(adapter, prompts)
    return prompts


def _prompt(adapter: ModelAdapter, question: str, kept: KeptTokens) -> Prompt:
    pieces: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    visual: list[torch.Tensor] = []
    axes = 1 if kept.positions is None else kept.positions.shape[1]
    position, prefix = 0, 0
    device = adapter.device
    for piece in adapter.prompt(question, kept):
        if isinstance(piece, VisualSlot):
            tokens = torch.cat(kept.frames[piece.first : piece.first + piece.count])
            if kept.positions is None:
                where = torch.arange(position, position + len(tokens), device=device).expand(axes, -1)
                position += len(tokens)
            else:  # the stock positions of the slot's tokens, relative to its first position
                start = sum(kept.tokens_per_frame[: piece.first])
                where = position + kept.positions[start : start + len(tokens)].T.to(device)
                position += kept.position_span
            pieces.append(tokens)
            positions.append(where)
            visual.append(torch.ones(len(tokens), dtype=torch.bool))
            if kept.trailing is not None and piece.first + piece.count == len(kept.frames):
                pieces.append(kept.trailing)  # after the input's last frame; text to LLM-stage methods
                positions.append(torch.arange(position, position + len(kept.trailing), device=device).expand(axes, -1))
                visual.append(torch.zeros(len(kept.trailing), dtype=torch.bool))
                position += len(kept.trailing)
            prefix = sum(len(p) for p in pieces)
        elif piece:
            pieces.append(adapter.embed(torch.tensor(piece, device=device)))
            positions.append(torch.arange(position, position + len(piece), device=device).expand(axes, -1))
            visual.append(torch.zeros(len(piece), dtype=torch.bool))
            position += len(piece)
    where = torch.cat(positions, dim=1)
    return Prompt(torch.cat(pieces).to(adapter.dtype), where[0] if kept.positions is None else where,
                  torch.cat(visual).to(device), prefix, kept, kept.side_features)


def check_context(adapter: ModelAdapter, prompts: list[Prompt]) -> None:
    """Refuse a prompt longer than the LLM's context (it would be answered, silently wrong), naming its parts."""
    limit = adapter.max_context
    if limit is None:
        return
    for sample, prompt in enumerate(prompts):
        if prompt.length <= limit:
            continue
        visual = int(prompt.visual_mask.sum())
        raise PromptTooLongError(
            f"the prompt is {prompt.length} tokens ({visual} visual + {prompt.length - visual} text), longer than the "
            f"{limit} tokens {adapter.family}'s LLM was built for: ask a shorter question, or keep fewer visual "
            "tokens (a smaller keep, a larger reduction).", sample)


def check_answer_room(adapter: ModelAdapter, prompts: list[Prompt], max_new_tokens: int) -> None:
    """Refuse a prompt whose answer could run past the LLM's context (it would be generated, silently wrong, at
    positions the model was never trained on): the last answer token's position must fit, naming both numbers and
    the fixes."""
    limit = adapter.max_context
    if limit is None:
        return
    for sample, prompt in enumerate(prompts):
        if prompt.next_position + max_new_tokens <= limit:
            continue
        raise PromptTooLongError(
            f"the prompt is {prompt.length} tokens and its answer may take up to {max_new_tokens} more "
            f"(max_new_tokens), past the {limit} tokens {adapter.family}'s LLM was built for: lower max_new_tokens "
            f"(--max-new-tokens) to {max(limit - prompt.next_position, 0)} or less, ask a shorter question, or keep "
            "fewer visual tokens.", sample)
