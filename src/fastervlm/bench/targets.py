"""The performance targets of the issues, checked on a benchmark result (goals to report against, not to tune to)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fastervlm.bench.results import BenchResult

TARGET_REDUCTION = 0.9
"""The issue's targets are stated at 208 tokens: r = 0.9 on Video-LLaVA."""
TARGET_MIN_WIDTH = 512
"""The targets speak of real models (Video-LLaVA-7B's geometry, 4096 wide, or a real checkpoint). A toy LLM
narrower than this (the demo's tiny model is 64 wide) spends its time in per-call overheads: its timings say
nothing about speed, so check_targets reports the targets as not applicable (met None) on it."""


@dataclass
class Target:
    """One of the issue's claims, checked on this result (met None: this run cannot tell)."""

    name: str
    measured: str
    met: bool | None


def result_json(result: BenchResult) -> dict[str, Any]:
    """The result as JSON with the targets checked on it (what `fastervlm bench` writes to bench.json)."""
    return {**result.to_json(), "targets": [asdict(t) for t in check_targets(result)]}


def toy_model_note(result: BenchResult) -> str | None:
    """Why this result's timings say nothing about speed (an LLM narrower than TARGET_MIN_WIDTH), else None."""
    if result.llm_width is not None and result.llm_width < TARGET_MIN_WIDTH:
        return f"a toy model: LLM {result.llm_width} wide < {TARGET_MIN_WIDTH}, its timings say nothing about speed"
    return None


def check_targets(result: BenchResult) -> list[Target]:
    """The issue's three targets on this result; not applicable (met None) on a toy model (TARGET_MIN_WIDTH)."""
    targets = _judge_targets(result)
    note = toy_model_note(result)
    if note:
        return [Target(t.name, f"{t.measured} (n/a: {note})", None) for t in targets]
    return targets


def _judge_targets(result: BenchResult) -> list[Target]:
    from fastervlm.methods import baseline_method, default_method

    targets = []
    method = default_method(budget_given=True)
    row = next((r for r in result.rows if r.method == method and r.settings == {"reduction": TARGET_REDUCTION}), None)
    name = f"LLM prefill speedup at r={TARGET_REDUCTION} reaches 80% of the analytic FLOPs ratio"
    if row is None or row.prefill_speedup is None or row.flops_ratio is None:
        targets.append(Target(name, f"needs a '{baseline_method()}' row and a {method} reduction={TARGET_REDUCTION} "
                                    "row", None))
    else:
        share = row.prefill_speedup / row.flops_ratio
        targets.append(Target(name, f"{row.visual_tokens} tokens: prefill x{row.prefill_speedup:.2f} vs FLOPs "
                                    f"x{row.flops_ratio:.2f} = {100 * share:.0f}%", share >= 0.8))
    rows = {r.name: r for r in result.extraction}
    ours, reference = rows.get("ours"), rows.get("reference")
    name = "[CLS] scoring costs under 1% of the vision encoder"
    if ours is None:
        targets.append(Target(name, "needs the [CLS] extraction rows", None))
    else:
        share = ours.cls_scoring.median / ours.encoder.median
        targets.append(Target(name, f"{1e3 * ours.cls_scoring.median:.3f} ms of {1e3 * ours.encoder.median:.1f} ms "
                                    f"= {100 * share:.3f}%", share < 0.01))
    name = "our encoder pass is faster and uses less peak memory than the reference-style extraction"
    if ours is None or reference is None:
        targets.append(Target(name, "needs the [CLS] extraction rows", None))
    else:
        ours_s = ours.encoder.median + ours.cls_scoring.median
        ref_s = reference.encoder.median + reference.cls_scoring.median
        ours_m, ref_m = ours.memory.peak_bytes, reference.memory.peak_bytes
        memory_ok = None if ours_m is None or ref_m is None else ours_m < ref_m
        measured = f"{1e3 * ours_s:.1f} ms vs {1e3 * ref_s:.1f} ms"
        if memory_ok is not None:
            measured += f"; peak {ours_m / 2**20:.0f} MiB vs {ref_m / 2**20:.0f} MiB"
        targets.append(Target(name, measured, None if memory_ok is None else (ours_s < ref_s and memory_ok)))
    return targets


