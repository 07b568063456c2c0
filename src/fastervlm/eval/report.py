"""The seed's results table from run directories: per benchmark Acc/Score, averages relative to the unpruned
baseline, paired tests against it, as Markdown, CSV, JSON and a PNG plot of relative accuracy vs visual tokens.

"Average" is the mean over benchmarks of (row / baseline row of the same model), the baseline being the run
that keeps every visual token (the registry's baseline method, or reduction 0). Nothing is hidden: prediction errors (e.g. missing videos), missing
predictions and unjudged items are counted per run, flagged in the table and listed under it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import BENCHMARKS
from fastervlm.eval.compare import compare_runs
from fastervlm.eval.metrics import Mode, paired_test
from fastervlm.eval.reading import RunResult, judge_models_of, judged_models, read_run
from fastervlm.eval.rundir import find_runs_under
from fastervlm.eval.storage import writing

__all__ = ["Report", "Row", "RunResult", "build_report", "compare_runs", "judged_models", "read_run", "report_runs",
           "write_report"]

FLAG = "†"
"""Marks an incomplete run, or an average over fewer benchmarks than the table has."""


@dataclass
class Row:
    """One table row: a model and a run folder name, with one result per benchmark."""

    model: str
    row: str
    variant: str
    settings: dict[str, Any]
    results: dict[str, RunResult] = field(default_factory=dict)
    relative_accuracy: float | None = None
    relative_score: float | None = None
    relative_over: int = 0
    """Benchmarks both relative averages cover (a benchmark whose ratio is undefined, e.g. a baseline accuracy
    of 0, is not covered)."""

    @property
    def is_baseline(self) -> bool:
        return next(iter(self.results.values())).is_baseline

    @property
    def visual_tokens(self) -> float | None:
        return _mean([r.visual_tokens for r in self.results.values() if r.visual_tokens is not None])

    @property
    def llm_prefill_flops(self) -> float | None:
        return _mean([r.llm_prefill_flops for r in self.results.values() if r.llm_prefill_flops is not None])

    def budget(self) -> str:
        if self.is_baseline:
            return "no pruning"
        if self.settings.get("reduction") is not None:
            return f"reduction {100 * self.settings['reduction']:g}%"
        if self.settings.get("keep") is not None:
            return f"keep {self.settings['keep']} per frame"
        return "other"

    def sort_key(self) -> tuple:
        reduction = self.settings.get("reduction")
        keep = self.settings.get("keep")
        return (not self.is_baseline, reduction if reduction is not None else 2.0, -(keep or 0), self.row)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def column_format(values: list[float], significant: int = 3) -> Callable[[float], str]:
    """One format for a whole column: fixed decimals that give its smallest value `significant` digits, or
    scientific notation for every value when that would take more than 4 decimals (a tiny model's TFLOPs)."""
    smallest = min((abs(v) for v in values if v), default=1.0)
    decimals = max(0, significant - 1 - math.floor(math.log10(smallest)))
    return (lambda v: f"{v:.{significant - 1}e}") if decimals > 4 else (lambda v: f"{v:.{decimals}f}")


def _p_value(p: float) -> str:
    """A p-value in one format: three decimals, or "<0.001"."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class Report:
    mode: Mode
    judge_model: str | None
    results: list[RunResult]
    rows: list[Row]
    benchmarks: list[tuple[str, str]]
    """(name, title) in column order."""

    def markdown(self) -> str:
        head = ["Model", "Method", "# Token"]
        for _, title in self.benchmarks:
            head += [f"{title} Acc", f"{title} Score"]
        head += ["Avg Acc", "Avg Score", "Prefill TFLOPs"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        tflops = column_format([row.llm_prefill_flops / 1e12 for row in self.rows if row.llm_prefill_flops])
        budget = None
        for row in self.rows:
            if row.budget() != budget:
                budget = row.budget()
                lines.append(f"| *{budget}* |" + " |" * (len(head) - 1))
            tokens = f"{row.visual_tokens:.0f}" if row.visual_tokens is not None else "–"
            cells = [row.model, row.row, tokens]
            for name, _ in self.benchmarks:
                cells += _metric_cells(row.results.get(name))
            avg_flag = FLAG if row.relative_over < len(self.benchmarks) else ""
            cells += [_percent(row.relative_accuracy) + avg_flag, _percent(row.relative_score) + avg_flag,
                      "–" if row.llm_prefill_flops is None else tflops(row.llm_prefill_flops / 1e12)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", self._legend()]
        notes = [f"- {r.model} / {r.benchmark} / {r.row}: {'; '.join(r.problems())}" for r in self.results if r.problems()]
        if notes:
            lines += ["", f"{FLAG} Incomplete runs (their numbers cover only the judged items):", *notes]
        tests = self._tests_markdown()
        if tests:
            lines += ["", *tests]
        return "\n".join(lines) + "\n"

    def _legend(self) -> str:
        judge = f"judge {self.judge_model}" if self.judge_model else "not judged yet (run `fastervlm eval judge`)"
        return (
            f"Acc = yes/(yes+no) in %, Score = mean judge score (0-5); {judge}, metrics mode {self.mode}. "
            "Avg = mean over benchmarks of the ratio to the baseline row (no pruning) of the same "
            f"model; {FLAG} = incomplete run, or an average over fewer benchmarks than the table has. Prefill "
            "TFLOPs = mean analytic LLM prefill FLOPs per answer (docs/flops.md); report.csv also has what the runs "
            "computed (computed_prefill_flops: a video's shared prompt prefix counted once)."
        )

    def _tests_markdown(self) -> list[str]:
        rows = [r for r in self.rows if not r.is_baseline and any(x.baseline_test for x in r.results.values())]
        if not rows:
            return []
        head = ["Model", "Method"] + [title for _, title in self.benchmarks]
        out = [
            "Paired tests against the baseline on the same items: accuracy change in points (McNemar exact p), "
            "score change (paired z-test p).",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for row in rows:
            cells = [row.model, row.row]
            for name, _ in self.benchmarks:
                test = row.results[name].baseline_test if name in row.results else None
                if test is None or test.accuracy_diff is None:
                    cells.append("–")
                else:
                    score = (f"{test.score_diff:+.2f} (p={_p_value(test.score_p)})" if test.score_diff is not None
                             else "–")
                    cells.append(f"{100 * test.accuracy_diff:+.1f} (p={_p_value(test.accuracy_p)}); {score}")
            out.append("| " + " | ".join(cells) + " |")
        return out

    def csv(self) -> str:
        """One row per run; every column's numbers in one format (`CSV_FORMATS`), an empty cell for none."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for r in self.results:
            m, t = r.metrics, r.baseline_test
            values = [
                r.model, r.benchmark, r.row, r.settings.get("method"), r.settings.get("reduction"),
                r.settings.get("keep"), r.visual_tokens, r.llm_prefill_flops, r.computed_prefill_flops, r.items, r.predicted, r.errors, r.missing_predictions,
                r.unjudged, m.judged if m else None, m.yes if m else None, m.no if m else None,
                m.accuracy if m else None, *(m.accuracy_ci if m and m.accuracy_ci else (None, None)),
                m.score if m else None, *(m.score_ci if m and m.score_ci else (None, None)),
                t.accuracy_p if t else None, t.score_p if t else None, r.run.path,
            ]
            writer.writerow([_csv_cell(value, CSV_FORMATS.get(name)) for name, value in zip(CSV_COLUMNS, values)])
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "judge_model": self.judge_model,
            "benchmarks": [name for name, _ in self.benchmarks],
            "rows": [
                {"model": row.model, "row": row.row, "settings": row.settings, "visual_tokens": row.visual_tokens,
                 "llm_prefill_flops": row.llm_prefill_flops, "relative_accuracy": row.relative_accuracy, "relative_score": row.relative_score,
                 "relative_over": row.relative_over, "benchmarks": sorted(row.results)}
                for row in self.rows
            ],
            "runs": [r.to_json() for r in self.results],
        }

    def plot(self, path: Path) -> Path:
        """report.png: relative accuracy, then each benchmark's accuracy and score with their 95% intervals, against
        visual tokens (`report_plot`)."""
        from fastervlm.eval.report_plot import write_plot

        return write_plot(self, path)


CSV_COLUMNS = (
    "model", "benchmark", "row", "method", "reduction", "keep", "visual_tokens", "llm_prefill_flops",
    "computed_prefill_flops", "items", "predicted",
    "errors", "missing_predictions", "unjudged", "judged", "yes", "no", "accuracy", "accuracy_ci_low",
    "accuracy_ci_high", "score", "score_ci_low", "score_ci_high", "mcnemar_p_vs_baseline", "score_p_vs_baseline",
    "run_dir",
)
CSV_FORMATS = {
    "visual_tokens": ".1f", "llm_prefill_flops": ".0f", "computed_prefill_flops": ".0f",
    **dict.fromkeys(("accuracy", "accuracy_ci_low", "accuracy_ci_high"), ".4f"),
    **dict.fromkeys(("score", "score_ci_low", "score_ci_high"), ".4f"),
    **dict.fromkeys(("mcnemar_p_vs_baseline", "score_p_vs_baseline"), ".3e"),
}
"""The measured columns' number formats (counts are integers; reduction and keep are the settings as given)."""


def _csv_cell(value: Any, fmt: str | None) -> Any:
    return "" if value is None else format(value, fmt) if fmt else value


def _percent(value: float | None) -> str:
    return f"{100 * value:.2f}%" if value is not None else "–"


def _metric_cells(result: RunResult | None) -> list[str]:
    if result is None or result.metrics is None or result.metrics.accuracy is None:
        return ["–", "–"]
    flag = "" if result.complete else FLAG
    score = result.metrics.score
    return [f"{100 * result.metrics.accuracy:.1f}{flag}", f"{score:.2f}{flag}" if score is not None else "–"]


def _ratio_mean(pairs: list[tuple[float | None, float | None]]) -> tuple[float | None, int]:
    """The mean of the defined ratios value / baseline, and how many there were."""
    ratios = [v / b for v, b in pairs if v is not None and b]
    return _mean(ratios), len(ratios)


def build_report(paths: list[str | os.PathLike], *, judge_model: str | None = None, mode: Mode = "strict") -> Report:
    """Read every run under `paths` and lay them out as the seed's table."""
    runs = find_runs_under(paths)
    if judge_model is None:
        models = judge_models_of(runs)
        if len(models) > 1:
            raise FasterVLMError(f"these runs were judged by several models ({', '.join(models)}): choose one with --judge-model.")
        judge_model = models[0] if models else None
    results = [read_run(run, judge_model, mode) for run in runs]
    rows: dict[tuple[str, str], Row] = {}
    for r in results:
        row = rows.setdefault((r.model, r.row), Row(r.model, r.row, r.variant, r.settings))
        if r.benchmark in row.results:
            raise FasterVLMError(
                f"two runs for {r.model} / {r.benchmark} / {r.row}: {row.results[r.benchmark].run.path} and "
                f"{r.run.path}; report them separately or give them different --tag values."
            )
        row.results[r.benchmark] = r
    known = list(BENCHMARKS)
    names = sorted({r.benchmark: r.title for r in results}.items(), key=lambda nt: (known.index(nt[0]) if nt[0] in known else len(known), nt[0]))
    _relate_to_baselines(list(rows.values()), mode)
    return Report(mode, judge_model, results, sorted(rows.values(), key=lambda row: (row.model, row.sort_key())), names)


def _relate_to_baselines(rows: list[Row], mode: Mode) -> None:
    """Relative averages and paired tests of every row against its model's baseline row."""
    for row in rows:
        baselines = [b for b in rows if b.model == row.model and b.is_baseline]
        if len(baselines) != 1:
            continue  # no baseline (or an ambiguous one): no relative numbers
        base = baselines[0]
        common = [name for name in row.results if name in base.results]
        pairs = [(row.results[n].metrics, base.results[n].metrics) for n in common]
        pairs = [(m, b) for m, b in pairs if m is not None and b is not None]
        row.relative_accuracy, accuracy_over = _ratio_mean([(m.accuracy, b.accuracy) for m, b in pairs])
        row.relative_score, score_over = _ratio_mean([(m.score, b.score) for m, b in pairs])
        row.relative_over = min(accuracy_over, score_over)
        if row is not base:
            for name in common:
                mine, theirs = row.results[name].metrics, base.results[name].metrics
                if mine is not None and theirs is not None:
                    row.results[name].baseline_test = paired_test(theirs, mine)


def write_report(report: Report, out_dir: str | os.PathLike, *, plot: bool = True,
                 fix: str = "choose a writable folder for report.md, .csv, .json and .png.") -> dict[str, Path]:
    """report.md, report.csv, report.json (and report.png) in `out_dir`; a folder that refuses them is a
    NotWritableError that names it and says `fix`."""
    out = Path(out_dir)
    files = {"markdown": out / "report.md", "csv": out / "report.csv", "json": out / "report.json"}
    with writing(out, fix):
        out.mkdir(parents=True, exist_ok=True)
        files["markdown"].write_text(report.markdown())
        files["csv"].write_text(report.csv())
        files["json"].write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        if plot:
            files["png"] = report.plot(out / "report.png")
    return files


def report_runs(paths: list[str | os.PathLike], out: str | os.PathLike, *, judge_model: str | None = None,
                mode: Mode = "strict", plot: bool = True, show: Callable[[str], None] = print,
                say: Callable[[str], None] = print) -> tuple[Report, dict[str, Path]]:
    """Build the report of every run under `paths`, `show` its Markdown table, then write its files into `out`
    (`say` names them). The table comes first: a folder that refuses the files still gets it shown."""
    report = build_report(paths, judge_model=judge_model, mode=mode)
    show(report.markdown())
    fix = "the table above is complete; pass --out a writable folder to also save report.md, .csv, .json and .png."
    files = write_report(report, out, plot=plot, fix=fix)
    say("wrote " + ", ".join(str(p) for p in files.values()))
    return report, files


