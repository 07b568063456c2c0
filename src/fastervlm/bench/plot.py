"""The benchmark's picture: time to first token and LLM prefill FLOPs against the visual tokens kept."""

from __future__ import annotations

import os
from pathlib import Path

from fastervlm.bench.results import BenchResult
from fastervlm.bench.targets import toy_model_note


def plot(result: BenchResult, path: str | os.PathLike) -> Path:
    """PNG: time to first token and LLM prefill FLOPs against visual tokens kept, one line per method, with the
    speedup over the unpruned row written at each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    base = result.baseline()
    for method in dict.fromkeys(r.method for r in result.rows if not r.baseline):
        rows = sorted((r for r in result.rows if r.method == method), key=lambda r: r.visual_tokens)
        tokens = [r.visual_tokens for r in rows]
        ttft = [r.timings["time_to_first_token"] for r in rows]
        left.errorbar(tokens, [1e3 * s.median for s in ttft], marker="o", capsize=3, label=method,
                      yerr=[[1e3 * (s.median - s.low) for s in ttft], [1e3 * (s.high - s.median) for s in ttft]])
        for number, (r, s) in enumerate(zip(rows, ttft)):
            if r.ttft_speedup is not None:  # alternate above and below the point, so neighbours do not collide
                left.annotate(f"x{r.ttft_speedup:.1f}", (r.visual_tokens, 1e3 * s.median), textcoords="offset points",
                              xytext=(4, 6 if number % 2 == 0 else -12), fontsize=8)
        if all(r.llm_prefill_flops is not None for r in rows):
            right.plot(tokens, [r.llm_prefill_flops / 1e9 for r in rows], marker="o", label=method)
    if base is not None:
        unpruned = f"{base.method} (unpruned)"
        left.axhline(1e3 * base.timings["time_to_first_token"].median, color="grey", linestyle=":", label=unpruned)
        if base.llm_prefill_flops is not None:
            right.axhline(base.llm_prefill_flops / 1e9, color="grey", linestyle=":", label=unpruned)
    left.set(xlabel="visual tokens kept", ylabel="time to first token (ms, median, min-max)", title="Time to first token")
    right.set(xlabel="visual tokens kept", ylabel="LLM prefill GFLOPs (analytic)", title="LLM prefill FLOPs")
    for axes in (left, right):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"{result.model} on {result.device} ({result.dtype}, {result.threads} threads)", fontsize=10)
    note = toy_model_note(result)
    if note:  # the same caveat as the table's: a toy model's timings say nothing about speed
        left.text(0.5, 0.5, note, transform=left.transAxes, ha="center", va="center", fontsize=9, wrap=True,
                  color="firebrick", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "firebrick"})
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
