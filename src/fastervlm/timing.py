"""Per-stage wall-clock timings, synchronised on CUDA so that a stage's time is its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


TTFT_STAGES = ("vision_encoder", "cls_scoring", "selection", "projector", "llm_prefill")
"""The stages between preprocessed pixels and the first generated token: their sum is the time to first token."""


def time_to_first_token(timings: dict[str, float]) -> float:
    """Seconds from preprocessed pixels to the first token (video decoding excluded), from per-stage timings."""
    return sum(timings.get(stage, 0.0) for stage in TTFT_STAGES)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so that a timestamp taken next is honest."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates seconds per named stage: `with timer("vision"): ...`; `timer.seconds` is the result."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
