"""The result rows of a benchmark and the numbers derived from them (speedups over the unpruned row)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

@dataclass
class Stat:
    """Median, min and max of repeated measurements (seconds, or whatever unit the values have)."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: Sequence[float]) -> Stat | None:
        return Stat(statistics.median(values), min(values), max(values)) if values else None


@dataclass
class Memory:
    """Peak memory of one configuration and the level before its first run (bytes); `kind` says how measured."""

    peak_bytes: int | None
    baseline_bytes: int | None
    kind: str

    @property
    def added_bytes(self) -> int | None:
        """Peak above the level before the first run: activations, caches and temporaries."""
        return None if self.peak_bytes is None or self.baseline_bytes is None else self.peak_bytes - self.baseline_bytes


@dataclass
class BenchRow:
    """One configuration's measurements."""

    label: str
    method: str
    settings: dict[str, Any]
    stage: str
    visual_tokens: int
    prompt_tokens: int
    generated_tokens: int
    timings: dict[str, Stat]
    """Per stage (PIPELINE_STAGES), plus "time_to_first_token" and "decode_per_token" (seconds)."""
    memory: Memory
    kv_cache_bytes: int | None
    llm_prefill_flops: int | None
    baseline: bool = False
    """This row keeps every token (the unpruned row the speedups refer to)."""
    ttft_speedup: float | None = None
    prefill_speedup: float | None = None
    flops_ratio: float | None = None
    """Unpruned row's value over this row's (for FLOPs: how many times fewer)."""

    def seconds(self, stage: str) -> float | None:
        stat = self.timings.get(stage)
        return None if stat is None else stat.median


@dataclass
class ExtractionRow:
    """One way of getting the [CLS] attention out of the video tower: its encoder pass, its scoring step."""

    name: str
    description: str
    layers_run: int
    encoder: Stat
    cls_scoring: Stat
    attention_bytes: int
    """Attention data held for scoring: every returned map (reference), or the [CLS] queries and keys (ours)."""
    memory: Memory
    max_score_difference: float | None = None
    """Largest |reference score - our score| on the same pixels (reference row only)."""


@dataclass
class BenchResult:
    model: str
    device: str
    dtype: str
    threads: int
    torch_version: str
    video: str
    warmup: int
    repeats: int
    max_new_tokens: int
    rows: list[BenchRow]
    extraction: list[ExtractionRow]
    notes: list[str] = field(default_factory=list)
    load_average: tuple[float, float] | None = None
    """The machine's 1-minute load average before and after the run (other work on the machine skews times)."""
    llm_width: int | None = None
    """The LLM's hidden size (None: unknown); below TARGET_MIN_WIDTH the targets are not applicable."""

    def baseline(self) -> BenchRow | None:
        """The unpruned row the speedups refer to."""
        return baseline_row(self.rows)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def baseline_row(rows: Sequence[BenchRow]) -> BenchRow | None:
    """The row that keeps every token (the registry's baseline method), if measured."""
    return next((row for row in rows if row.baseline), None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def add_speedups(rows: list[BenchRow]) -> None:
    base = baseline_row(rows)
    if base is None:
        return
    for row in rows:
        row.ttft_speedup = _ratio(base.seconds("time_to_first_token"), row.seconds("time_to_first_token"))
        row.prefill_speedup = _ratio(base.seconds("llm_prefill"), row.seconds("llm_prefill"))
        row.flops_ratio = _ratio(base.llm_prefill_flops, row.llm_prefill_flops)


