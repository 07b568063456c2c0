"""The demo (`fastervlm demo`) as a library function, and the tiny model every command runs with `--model tiny`.

    from fastervlm.demo import run_demo, tiny_pipeline
    result = run_demo(reduction=0.9)          # no download: a tiny random checkpoint and a synthetic video
    result.speedup, [row.ttft.median for row in result.rows]
    pipeline = tiny_pipeline()                # the same tiny model, for any command run with --model tiny

Timings are honest by construction: each configuration answers once untimed (its one-off costs: first calls,
allocations, kernel choices), then the configurations run interleaved `repeats` times, so that a drift in the
machine's load falls on both, and the medians are reported with their spread.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastervlm.models.videollava_tiny import TinySpec

if TYPE_CHECKING:
    from fastervlm.pipeline import Answer, Frames, Pipeline

_TINY = TinySpec()

QUESTION = "What is moving in the video?"
REDUCTION = 0.9
MAX_NEW_TOKENS = 24
REPEATS = 7
"""Timed runs per configuration: enough for a median that three demo runs agree on, still a second or two."""
TOY_NOTE = (f"the tiny model is random, so its answers are noise, and it is tiny (a {_TINY.llm_layers}-layer, "
            f"{_TINY.llm_width}-wide LLM), so it spends its time in per-call overheads: its timings show that fewer "
            "tokens reach the LLM, not what a 7B model gains (`fastervlm bench --geometry video-llava-7b` measures "
            "that).")
"""What the demo's timings can and cannot show, in one line."""


def tiny_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo's tiny Video-LLaVA checkpoint folder, written into the cache ($FASTERVLM_CACHE or
    ~/.cache/fastervlm, or `cache_dir`) on first use."""
    from fastervlm.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(cache_dir=cache_dir)


def tiny_pipeline(device: str | None = None, dtype: str | None = None,
                  cache_dir: str | os.PathLike | None = None, **options: Any) -> Pipeline:
    """The tiny model loaded (`fastervlm.load` options as for any checkpoint): what the demo and `--model tiny`
    run."""
    import fastervlm

    return fastervlm.load(tiny_checkpoint(cache_dir), device=device, dtype=dtype, **options)


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements, in seconds."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: Sequence[float]) -> Spread:
        return Spread(statistics.median(values), min(values), max(values))


@dataclass
class DemoRow:
    """One configuration: its (untimed, full-length) answer and its timed runs."""

    label: str
    answer: Answer
    ttft: Spread
    """Time to first token over the timed runs."""
    prefill: Spread
    """The LLM's part of it (llm_prefill)."""


@dataclass
class DemoResult:
    checkpoint: Path
    video: Path
    frame_indices: list[int] | None
    question: str
    rows: list[DemoRow]
    """The unpruned row first, then the pruned one."""
    repeats: int

    @property
    def speedup(self) -> float:
        """Median time to first token without pruning over the pruned one's."""
        base, pruned = self.rows[0].ttft.median, self.rows[-1].ttft.median
        return base / pruned if pruned > 0 else float("inf")


def run_demo(
    cache_dir: str | os.PathLike | None = None,
    reduction: float = REDUCTION,
    max_new_tokens: int = MAX_NEW_TOKENS,
    *,
    repeats: int = REPEATS,
    question: str = QUESTION,
) -> DemoResult:
    """Answer `question` about a synthetic video on the tiny model, unpruned and with the default method at
    `reduction`: one full answer each (also the warm-up), then `repeats` interleaved timed runs of one token."""
    from fastervlm.errors import FasterVLMError
    from fastervlm.tiny.video import write_synthetic_video
    from fastervlm.methods import baseline_method, create_pruner, default_method
    from fastervlm.models.base import GenerationSettings
    from fastervlm.tiny import default_cache_dir

    if max_new_tokens < 1 or repeats < 1:
        raise FasterVLMError(f"max_new_tokens and repeats must be at least 1 (got {max_new_tokens} and {repeats}).")
    pruners = {baseline_method(): create_pruner(baseline_method()),
               f"{default_method(True)} r={reduction:g}": create_pruner(default_method(True), reduction=reduction)}
    checkpoint = tiny_checkpoint(cache_dir)
    pipeline = tiny_pipeline(device="cpu", cache_dir=cache_dir)
    video = write_synthetic_video((default_cache_dir() if cache_dir is None else Path(cache_dir)) / "demo.mp4")
    frames = pipeline.frames(video=video)
    answers = {label: _answer(pipeline, frames, question, pruner, GenerationSettings(max_new_tokens=max_new_tokens))
               for label, pruner in pruners.items()}
    runs: dict[str, list[Answer]] = {label: [] for label in pruners}
    for _ in range(repeats):  # interleaved: a change in the machine's load falls on every configuration
        for label, pruner in pruners.items():
            runs[label].append(_answer(pipeline, frames, question, pruner, GenerationSettings(max_new_tokens=1)))
    rows = [DemoRow(label, answers[label], Spread.of([a.time_to_first_token for a in runs[label]]),
                    Spread.of([a.timings["llm_prefill"] for a in runs[label]])) for label in pruners]
    return DemoResult(checkpoint, video, frames.frame_indices, question, rows, repeats)


def _answer(pipeline: Pipeline, frames: Frames, question: str, pruner: object, generation: object) -> Answer:
    return pipeline.run([frames], [question], pruner, generation)[0]
