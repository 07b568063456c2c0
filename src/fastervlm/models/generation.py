"""Generation helpers shared by every adapter: decoding settings -> GenerationConfig, and the prefill/decode clock.

Not an adapter: adapters import it, it imports no adapter.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor

from fastervlm.models.base import GenerationSettings
from fastervlm.timing import StageTimer, synchronize


class StepClock(LogitsProcessor):
    """Timestamps every decoding step: the first marks the end of the prefill (time to first token).

    Pass it in `logits_processor=[clock]`, call `start()` right before `generate` and `report(timer)` after it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = 0.0
        self.stamps: list[float] = []

    def start(self) -> None:
        synchronize(self.device)
        self.started = time.perf_counter()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores

    def report(self, timer: StageTimer) -> None:
        """Adds "llm_prefill" (start to first token) and "llm_decode" (first to last token) to `timer`."""
        if self.stamps:
            timer.add("llm_prefill", self.stamps[0] - self.started)
            timer.add("llm_decode", self.stamps[-1] - self.stamps[0])


def generation_config(settings: GenerationSettings, tokenizer: Any, defaults: GenerationConfig) -> GenerationConfig:
    """Greedy by default; sampling as the original (T = 0.1, top_p/top_k from the checkpoint's generation_config.json).

    Special ids come from the tokenizer, so a checkpoint's max_length and the like never leak into decoding.
    """
    special = dict(
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        bos_token_id=tokenizer.bos_token_id,
    )
    if not settings.sample:
        return GenerationConfig(do_sample=False, **special)
    return GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_p=defaults.top_p if defaults.top_p is not None else 1.0,
        top_k=defaults.top_k if defaults.top_k is not None else 50,
        **special,
    )


def until_eos(ids: list[int], eos: int | None) -> list[int]:
    """Generated ids up to and including the first EOS: a batch pads shorter answers after theirs."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids
