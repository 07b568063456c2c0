"""The benchmark's picture: time to first token and LLM prefill FLOPs against the visual tokens kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastervlm.bench.results import BenchResult
from fastervlm.bench.targets import toy_model_note


def _speedup_labels(axes: Any, labels: list[tuple[float, float, str, str]]) -> None:
    """Each (x, y, text, colour) beside its point: the labels of one x (methods share the budgets) are spread
    apart vertically so that they never overlap, kept inside the axes, and written on the inner side of points in
    the right half, on a white ground so that lines do not cross them."""
    axes.figure.canvas.draw()  # the final limits and transforms
    box = axes.get_window_extent()
    points_per_pixel = 72 / axes.figure.dpi
    middle = sum(axes.get_xlim()) / 2
    for x in dict.fromkeys(label[0] for label in labels):
        group = sorted((label for label in labels if label[0] == x), key=lambda label: label[1])
        anchors = [axes.transData.transform((x, y))[1] for _, y, _, _ in group]
        placed: list[float] = []
        for anchor in anchors:
            placed.append(max(anchor, box.y0 + LABEL_GAP / 2, placed[-1] + LABEL_GAP if placed else box.y0))
        overflow = max(0.0, placed[-1] - (box.y1 - LABEL_GAP / 2)) if placed else 0.0
        for (_, y, text, colour), anchor, height in zip(group, anchors, placed):
            side = -1 if x > middle else 1
            axes.annotate(text, (x, y), textcoords="offset points", fontsize=8, color=colour, va="center",
                          xytext=(6 * side, (height - overflow - anchor) * points_per_pixel),
                          ha="right" if side < 0 else "left", bbox={"boxstyle": "square,pad=0.1",
                                                                     "facecolor": "white", "edgecolor": "none"})


LABEL_GAP = 14
"""Pixels between the centres of two speedup labels at one budget."""


def plot(result: BenchResult, path: str | os.PathLike) -> Path:
    """PNG: time to first token and LLM prefill FLOPs against visual tokens kept, one line per method, with the
    speedup over the unpruned row written at each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    base = result.baseline()
    labels: list[tuple[float, float, str, str]] = []
    for number, method in enumerate(dict.fromkeys(r.method for r in result.rows if not r.baseline)):
        rows = sorted((r for r in result.rows if r.method == method), key=lambda r: r.visual_tokens)
        tokens = [r.visual_tokens for r in rows]
        ttft = [r.timings["time_to_first_token"] for r in rows]
        left.errorbar(tokens, [1e3 * s.median for s in ttft], marker="o", capsize=3, label=method,
                      yerr=[[1e3 * (s.median - s.low) for s in ttft], [1e3 * (s.high - s.median) for s in ttft]])
        labels += [(r.visual_tokens, 1e3 * s.median, f"x{r.ttft_speedup:.1f}", f"C{number}")
                   for r, s in zip(rows, ttft) if r.ttft_speedup is not None]
        if all(r.llm_prefill_flops is not None for r in rows):
            right.plot(tokens, [r.llm_prefill_flops / 1e9 for r in rows], marker="o", label=method)
    if base is not None:
        unpruned = f"{base.method} (unpruned)"
        left.axhline(1e3 * base.timings["time_to_first_token"].median, color="grey", linestyle=":", label=unpruned)
        if base.llm_prefill_flops is not None:
            right.axhline(base.llm_prefill_flops / 1e9, color="grey", linestyle=":", label=unpruned)
    left.set(xlabel="visual tokens kept", ylabel="time to first token (ms, median, min-max)")
    right.set(xlabel="visual tokens kept", ylabel="LLM prefill GFLOPs (analytic)", title="LLM prefill FLOPs")
    for axes in (left, right):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"{result.model} on {result.device} ({result.dtype}, {result.threads} threads)", fontsize=10)
    note = toy_model_note(result)
    left.set_title("Time to first token", pad=18 if note else None)
    if note:  # the table's caveat, between the title and the data: a toy model's timings say nothing about speed
        left.annotate(note, (0.5, 1.0), xycoords="axes fraction", xytext=(0, 4), textcoords="offset points",
                      ha="center", va="bottom", fontsize=8, color="firebrick")
    for axes in (left, right):
        axes.margins(x=0.08)  # room for the labels at the ends
    figure.tight_layout()
    _speedup_labels(left, labels)
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
