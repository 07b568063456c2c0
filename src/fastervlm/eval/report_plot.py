"""report.png: the relative accuracy (the table's Avg Acc) against visual tokens, then per benchmark the accuracy
and the score against visual tokens with the 95% intervals the CSV holds as error bars, one line per model and
method variant in the same colour in every panel.

The intervals are those of `fastervlm.eval.metrics`: Wilson for accuracy, normal for the mean score clipped to the
score's 0-5 range, so no bar leaves its axis' range. The relative accuracy is a ratio averaged over benchmarks and
has no interval of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastervlm.eval.metrics import SCORE_RANGE

if TYPE_CHECKING:
    from fastervlm.eval.metrics import Metrics
    from fastervlm.eval.report import Report


@dataclass
class Series:
    """One model and method variant: points (visual tokens, value, interval or None) per panel."""

    label: str
    colour: str
    points: dict[str, list[tuple[float, float, tuple[float, float] | None]]] = field(default_factory=dict)

    def add(self, panel: str, tokens: float, value: float, interval: tuple[float, float] | None) -> None:
        self.points.setdefault(panel, []).append((tokens, value, interval))


METRICS: dict[str, tuple[str, Callable[[Metrics], tuple[float | None, tuple[float, float] | None]], tuple[float, float]]] = {
    "acc": ("accuracy (%)", lambda m: _scaled(m.accuracy, m.accuracy_ci, 100.0), (0.0, 100.0)),
    "score": ("score (0-5)", lambda m: (m.score, m.score_ci), SCORE_RANGE),
}
"""Panel kind -> (axis label, (value, interval) from a run's metrics, the axis range)."""


def _scaled(value: float | None, interval: tuple[float, float] | None, factor: float) -> tuple:
    return (None if value is None else factor * value,
            None if interval is None else (factor * interval[0], factor * interval[1]))


def collect_series(report: Report) -> list[Series]:
    """Every row with visual tokens as a series: "relative" points, and "acc:<benchmark>" / "score:<benchmark>"
    points with their intervals."""
    from matplotlib import rcParams

    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    series: dict[str, Series] = {}
    for row in report.rows:
        label = f"{row.model}: {'baseline' if row.is_baseline else row.variant}"
        line = series.setdefault(label, Series(label, colours[len(series) % len(colours)]))
        if row.visual_tokens is not None and row.relative_accuracy is not None:
            line.add("relative", row.visual_tokens, 100 * row.relative_accuracy, None)
        for name, result in row.results.items():
            if result.metrics is None or result.visual_tokens is None:
                continue
            for kind, (_, read, _) in METRICS.items():
                value, interval = read(result.metrics)
                if value is not None:
                    line.add(f"{kind}:{name}", result.visual_tokens, value, interval)
    return [line for line in series.values() if line.points]


def report_figure(report: Report) -> Any:
    """The matplotlib Figure of report.png (no pyplot state)."""
    from matplotlib.figure import Figure

    names = [name for name, _ in report.benchmarks] or ["-"]
    titles = dict(report.benchmarks)
    mosaic = [["relative", *(f"acc:{n}" for n in names)], ["relative", *(f"score:{n}" for n in names)]]
    figure = Figure(figsize=(3.4 * (len(names) + 1), 6.4), dpi=120, layout="constrained")
    axes = figure.subplot_mosaic(mosaic)
    series = collect_series(report)
    for panel, ax in axes.items():
        for line in series:
            _draw(ax, line, panel)
        ax.set_xlabel("visual tokens per video")
        ax.grid(alpha=0.3)
        if panel == "relative":
            ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
            ax.set_ylabel("accuracy relative to baseline (%)")
            ax.set_title("average over benchmarks")
            continue
        kind, name = panel.split(":", 1)
        label, _, limits = METRICS[kind]
        ax.set_ylabel(label)
        margin = 0.03 * (limits[1] - limits[0])  # caps at the range's ends stay visible
        ax.set_ylim(limits[0] - margin, limits[1] + margin)
        ax.set_title(titles.get(name, name))
    if series:
        handles, labels = axes["relative"].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    figure.suptitle(f"judge {report.judge_model or '-'}, {report.mode} metrics; bars: 95% intervals (Wilson for "
                    "accuracy, normal clipped to 0-5 for the score)", fontsize="medium")
    return figure


def _draw(ax: Any, line: Series, panel: str) -> None:
    points = sorted(line.points.get(panel, []), key=lambda p: p[0])
    if not points and panel != "relative":
        return
    tokens = [p[0] for p in points]
    values = [p[1] for p in points]
    if panel == "relative" or all(p[2] is None for p in points):
        ax.plot(tokens, values, marker="o", color=line.colour, label=line.label)
        return
    # an interval's end can lie a rounding error inside the value (0% accuracy on a Wilson bound of -1e-15)
    below = [max(0.0, value - (interval or (value, value))[0]) for _, value, interval in points]
    above = [max(0.0, (interval or (value, value))[1] - value) for _, value, interval in points]
    ax.errorbar(tokens, values, yerr=[below, above], marker="o", capsize=3, color=line.colour, label=line.label)


def write_plot(report: Report, path: Path) -> Path:
    """report.png (or any format matplotlib writes, by the suffix)."""
    report_figure(report).savefig(path)
    return path
