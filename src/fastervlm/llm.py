"""The LLM stage on transformers: prefill the prompts, then decode, with a KV cache this module manages itself.

Why not `model.generate`: every question on one video and configuration starts with the same tokens (system
prompt, visual tokens), which are computed once and shared; and models with multi-axis positions (M-RoPE) need
the positions the prompt stage gives each kept token. One loop, written out here, does both for every family.

How a batch of prompts runs with a vision-stage method (or none):
1. prefix: the shared part of each distinct input's prompt (up to the end of its visual tokens) is prefilled
   alone, batch 1, no padding, once; its cache stays on the `KeptTokens` for later batches of questions on it;
2. extension: the prefix caches of the batch's rows are stacked (left-padded to the longest), and the questions'
   own tokens (left-padded among themselves, between prefix and question) are prefilled on top in one forward,
   which gives each row's first token;
3. decode: one token per row per step, greedy (argmax) or sampled (transformers' temperature / top-k / top-p
   warpers, then a multinomial draw, as `generate` does), until every row has ended or `max_new_tokens`.
Every answer goes through 1-3 whether other questions share its prefix or not, so the grouping changes no number;
`share_prefix=False` prefills whole prompts instead (tests hold the two to the same answers).
An LLM-stage method (FastV) decides at layer K from the last prompt token, so the layers from K on depend on the
question: its prompts are left-padded and prefilled whole, with the method attached to the decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StaticCache
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from fastervlm.errors import UnsupportedModelError
from fastervlm.methods.base import LLMPruner, Pruner, Selection
from fastervlm.models.base import GenerationSettings, LLMSideInputs, ModelAdapter
from fastervlm.prompts import Prompt
from fastervlm.timing import StageTimer, synchronize


@dataclass
class LLMOutput:
    """What the LLM stage returns for a batch of prompts."""

    ids: list[list[int]]
    """Generated ids per prompt, up to and including the first EOS."""
    llm_kept: torch.Tensor | None = None
    """(B, R) ranks of the visual tokens an LLM-stage method kept (frame after frame), else None."""
    prefix_computed: list[int] = field(default_factory=list)
    """Per prompt, the prefix tokens this call prefilled for it (0 when its prefix was computed before, or when the
    prompt was prefilled whole): a shared prefix is counted for the first prompt that used it."""
    shared_prefix: list[int] = field(default_factory=list)
    """Per prompt, the tokens of its prompt that came from a shared prefix cache (0 when prefilled whole)."""


def shares_prefix(adapter: ModelAdapter, pruner: Pruner) -> bool:
    """Whether prompts on the same input share their prefix's cache: not for LLM-stage methods (their layers from K
    on depend on the question), nor for LLMs with sliding-window layers (a padded stack of caches would shift
    their windows)."""
    sliding = "sliding_attention" in (getattr(adapter.llm_config, "layer_types", None) or ())
    return pruner.stage != "llm" and not sliding


def llm_stage(pruner: Pruner, decoder: torch.nn.Module, visual_mask: torch.Tensor, frames: int,
              num_patches: int) -> AbstractContextManager[Any]:
    """An LLM-stage method (FastV) attached to the decoder while the context is open; nothing for the others."""
    if pruner.stage != "llm":
        return nullcontext()
    return cast(LLMPruner, pruner).attach(decoder, visual_mask, frames=frames, num_patches=num_patches)


def one_geometry(pruner: Pruner, selections: list[Selection]) -> tuple[int, int]:
    """(frames, tokens per frame) of the batch's inputs, which an LLM-stage method budgets by: refused when they
    differ (a model that picks its grid per input, Qwen-VL)."""
    geometry = {(selection.frames, selection.patches) for selection in selections}
    if len(geometry) > 1 and pruner.stage == "llm" and pruner.prunes:
        raise UnsupportedModelError(f"{pruner.name} ranks one batch with one budget, but these inputs differ in frames "
                                    "or tokens per frame; answer them one at a time.")
    return next(iter(geometry))


class LLMBackend(Protocol):
    """What runs the LLM stage: prompts (embeddings with positions) in, generated ids out. `TransformersLLM` (here)
    is the default; `fastervlm.backends` holds the others."""

    name: str

    def generate(self, prompts: list[Prompt], pruner: Pruner, settings: GenerationSettings,
                 timer: StageTimer | None = None) -> LLMOutput: ...


@dataclass
class TransformersLLM:
    """The LLM stage on the adapter's transformers model, in this module's own prefill/decode loop.

    share_prefix=False prefills every prompt whole (left-padded), as LLM-stage methods always are: the same answers,
    only slower when several questions share an input (tests hold the two equal).
    static_cache: decode on transformers' StaticCache with the step compiled (torch.compile, CUDA graphs), so that a
    decoding step costs what the GPU needs rather than Python's overhead; None (default) means on for CUDA, off on
    the CPU (where the dynamic cache is faster). Never for LLM-stage methods, whose cache shrinks at layer K."""

    adapter: ModelAdapter
    share_prefix: bool = True
    static_cache: bool | None = None
    name: str = "transformers"
    _compiled: Any = field(default=None, repr=False)

    def _steps(self, cache: DynamicCache, mask: torch.Tensor, settings: GenerationSettings) -> Step:
        """The decoding steps after a shared-prefix prefill: on a static cache with a compiled step where chosen."""
        static = self.static_cache if self.static_cache is not None else self.adapter.device.type == "cuda"
        if not static:
            return _dynamic_steps(self.adapter, cache, mask)
        if self._compiled is None:
            forward = self.adapter.forward_llm
            self._compiled = (torch.compile(forward, mode="reduce-overhead")
                              if self.adapter.device.type == "cuda" else forward)
        return _static_steps(self.adapter, cache, mask, settings.max_new_tokens, self._compiled)

    def generate(self, prompts: list[Prompt], pruner: Pruner, settings: GenerationSettings,
                 timer: StageTimer | None = None) -> LLMOutput:
        """Answer the prompts in one batch: prefill (shared prefixes once), then decode."""
        adapter = self.adapter
        timer = timer or StageTimer(adapter.device)
        torch.manual_seed(settings.seed)
        with torch.inference_mode():
            if self.share_prefix and shares_prefix(adapter, pruner) and all(_prefix_length(p) for p in prompts):
                computed = _prefill_prefixes(adapter, prompts, timer)
                with timer("llm_prefill"):
                    logits, cache, mask = _extend(adapter, prompts)
                ids = _decode(adapter, logits, self._steps(cache, mask, settings), prompts, settings, timer)
                return LLMOutput(ids, None, computed, [_prefix_length(p) for p in prompts])
            batch = left_padded(adapter, prompts)
            frames, patches = one_geometry(pruner, [p.kept.selection for p in prompts])
            with llm_stage(pruner, adapter.decoder, batch.visual_mask, frames, patches) as run:
                with timer("llm_prefill"):
                    cache = DynamicCache()
                    logits = adapter.forward_llm(batch.embeds, batch.attention_mask, batch.positions, cache,
                                                 batch.side)
                ids = _decode(adapter, logits, _dynamic_steps(adapter, cache, batch.attention_mask), prompts,
                              settings, timer)
            zero = [0] * len(prompts)
            return LLMOutput(ids, getattr(run, "kept_visual", None), zero, zero)


# ----- prefill ------------------------------------------------------------------------------------------------------
def _prefix_length(prompt: Prompt) -> int:
    """The shared prefix, one token short of the whole prompt at most (the extension needs a token of its own)."""
    return min(prompt.prefix_length, prompt.length - 1)


def _prefill_prefixes(adapter: ModelAdapter, prompts: list[Prompt], timer: StageTimer) -> list[int]:
    """Compute the prefix cache of every input not computed before; returns the tokens computed per prompt."""
    computed = []
    for prompt in prompts:
        key = (id(adapter), _prefix_length(prompt))
        if key in prompt.kept.prefix_cache:
            computed.append(0)
            continue
        with timer("llm_prefill"):  # a prefix is prefilled by the first call that needs it
            prompt.kept.prefix_cache[key] = _prefix_cache(adapter, prompt)
        computed.append(key[1])
    return computed


def _prefix_cache(adapter: ModelAdapter, prompt: Prompt) -> DynamicCache:
    """One prompt's prefix prefilled alone (batch 1, no padding)."""
    length = _prefix_length(prompt)
    cache = DynamicCache()
    side = None
    if prompt.side_features:
        side = LLMSideInputs(prompt.visual_mask[None, :length], prompt.side_features)
    adapter.forward_llm(prompt.embeds[None, :length], torch.ones(1, length, dtype=torch.long, device=adapter.device),
                        _batch_positions([prompt.positions[..., :length]]), cache, side)
    return cache


def _extend(adapter: ModelAdapter, prompts: list[Prompt]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """The rows' prefix caches stacked (left-padded), the question tokens prefilled on top: (logits, cache, mask)."""
    prefixes = [_prefix_length(p) for p in prompts]
    caches = [p.kept.prefix_cache[(id(adapter), length)] for p, length in zip(prompts, prefixes)]
    longest = max(prefixes)
    layers = []
    for per_row in zip(*caches):  # one layer: (keys, values, sliding) of every row
        keys = torch.cat([F.pad(k, (0, 0, longest - k.shape[2], 0)) for k, _, _ in per_row])
        values = torch.cat([F.pad(v, (0, 0, longest - v.shape[2], 0)) for _, v, _ in per_row])
        layers.append((keys, values))
    cache = DynamicCache(ddp_cache_data=layers)
    suffixes = [p.embeds[length:] for p, length in zip(prompts, prefixes)]
    width = max(len(s) for s in suffixes)
    embeds = torch.stack([F.pad(s, (0, 0, width - len(s), 0)) for s in suffixes])
    positions = _batch_positions([p.positions[..., length:] for p, length in zip(prompts, prefixes)])
    mask = torch.zeros(len(prompts), longest + width, dtype=torch.long, device=adapter.device)
    for row, (prefix, suffix) in enumerate(zip(prefixes, suffixes)):
        mask[row, longest - prefix : longest] = 1
        mask[row, longest + width - len(suffix) :] = 1
    return adapter.forward_llm(embeds, mask, positions, cache), cache, mask


@dataclass
class PaddedBatch:
    """Prompts left-padded into one batch, for a prefill of whole prompts."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    visual_mask: torch.Tensor
    positions: torch.Tensor
    side: LLMSideInputs | None


def left_padded(adapter: ModelAdapter, prompts: list[Prompt]) -> PaddedBatch:
    """Whole prompts left-padded into one batch, with their positions (0 at the padding)."""
    width = max(p.length for p in prompts)
    embeds = torch.stack([F.pad(p.embeds, (0, 0, width - p.length, 0)) for p in prompts])
    mask = torch.stack([F.pad(torch.ones(p.length, dtype=torch.long, device=adapter.device), (width - p.length, 0))
                        for p in prompts])
    visual = torch.stack([F.pad(p.visual_mask, (width - p.length, 0)) for p in prompts])
    side = None
    if prompts[0].side_features:
        side = LLMSideInputs(visual, tuple(torch.cat(parts) for parts in zip(*(p.side_features for p in prompts))))
    return PaddedBatch(embeds, mask, visual, _batch_positions([p.positions for p in prompts]), side)


def _batch_positions(rows: list[torch.Tensor]) -> torch.Tensor:
    """Positions of rows of different lengths, left-padded with 0: (B, S), or (P, B, S) for multi-axis ones."""
    width = max(row.shape[-1] for row in rows)
    return torch.stack([F.pad(row, (width - row.shape[-1], 0)) for row in rows], dim=-2)


# ----- decode -------------------------------------------------------------------------------------------------------
Step = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""One decoding step: (chosen ids (B,), positions, step index) -> the next logits (B, V)."""


def _dynamic_steps(adapter: ModelAdapter, cache: DynamicCache, mask: torch.Tensor) -> Step:
    """Decoding on the prefill's DynamicCache: the mask and the cache grow by one column per step."""
    state = {"mask": mask}

    def step(chosen: torch.Tensor, positions: torch.Tensor, index: int) -> torch.Tensor:
        ones = torch.ones(len(chosen), 1, dtype=mask.dtype, device=mask.device)
        state["mask"] = torch.cat([state["mask"], ones], dim=1)
        return adapter.forward_llm(adapter.embed(chosen[:, None]), state["mask"], positions, cache)

    return step


def _static_steps(adapter: ModelAdapter, cache: DynamicCache, mask: torch.Tensor, new_tokens: int,
                  forward: Callable[..., torch.Tensor]) -> Step:
    """Decoding on a StaticCache filled with the prefill's keys and values: every step has the same shapes (the mask
    is one buffer of the final length), which is what a compiled step with CUDA graphs needs."""
    length = mask.shape[1]
    static = StaticCache(config=adapter.llm_config, max_cache_len=length + new_tokens)
    for index, (keys, values, _) in enumerate(cache):
        static.update(keys, values, index)
    buffer = torch.zeros(mask.shape[0], length + new_tokens, dtype=mask.dtype, device=mask.device)
    buffer[:, :length] = mask

    def step(chosen: torch.Tensor, positions: torch.Tensor, index: int) -> torch.Tensor:
        buffer[:, length + index] = 1
        return forward(adapter.embed(chosen[:, None]), buffer, positions, static)

    return step


def _decode(adapter: ModelAdapter, logits: torch.Tensor, step: Step, prompts: list[Prompt],
            settings: GenerationSettings, timer: StageTimer) -> list[list[int]]:
    """Tokens one step at a time for every row until each has ended (EOS) or `max_new_tokens`."""
    eos = adapter.tokenizer.eos_token_id
    pad = adapter.tokenizer.pad_token_id if adapter.tokenizer.pad_token_id is not None else 0
    choose = _chooser(settings, adapter.generation_defaults)
    next_position = torch.tensor([p.next_position for p in prompts], device=adapter.device)
    multi_axis = prompts[0].positions.ndim == 2
    tokens: list[torch.Tensor] = []
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=adapter.device)
    synchronize(adapter.device)
    started = time.perf_counter()
    for index in range(settings.max_new_tokens):
        chosen = choose(torch.stack(tokens, 1) if tokens else None, logits.float())
        chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
        tokens.append(chosen)
        finished |= chosen == eos
        if bool(finished.all()) or index == settings.max_new_tokens - 1:
            break
        positions = (next_position + index)[:, None]
        if multi_axis:
            positions = positions[None].expand(prompts[0].positions.shape[0], -1, -1)
        logits = step(chosen, positions, index)
    synchronize(adapter.device)
    timer.add("llm_decode", time.perf_counter() - started)
    out = torch.stack(tokens, 1).tolist() if tokens else [[] for _ in prompts]
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def _chooser(settings: GenerationSettings, defaults: Any) -> Any:
    """The next token from float32 logits: argmax, or as `generate` samples (warpers, softmax, multinomial)."""
    if not settings.sample:
        return lambda generated, logits: logits.argmax(dim=-1)
    top_k = defaults.top_k if getattr(defaults, "top_k", None) is not None else 50
    top_p = defaults.top_p if getattr(defaults, "top_p", None) is not None else 1.0
    warpers = LogitsProcessorList([TemperatureLogitsWarper(settings.temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def sample(generated: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        scores = warpers(generated, logits)
        return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    return sample
