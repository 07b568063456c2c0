"""A grid of methods x reductions x benchmarks with one loaded model: predict every cell (plus the unpruned
baseline), then judge and report. Every cell is an ordinary run directory, so a stopped sweep resumes by
running the same command, and cells can be judged or reported on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastervlm.eval.benchmarks import LoadedBenchmark
from fastervlm.eval.predict import PredictSummary, Rank, predict_items, prepare_run
from fastervlm.eval.rundir import RunDir


@dataclass(frozen=True)
class Cell:
    method: str
    settings: dict[str, Any]


def grid(methods: list[str], reductions: list[float], options: dict[str, Any], baseline: bool = True) -> list[Cell]:
    """The baseline (method none) first, then every method at every reduction, most tokens first."""
    cells = [Cell("none", {})] if baseline else []
    for reduction in sorted(reductions):
        cells += [Cell(m, {"reduction": reduction, **options}) for m in methods if m != "none"]
    return cells


def sweep_predict(
    pipeline: Any,
    benchmarks: list[LoadedBenchmark],
    data_root: Path,
    cells: list[Cell],
    generation: Any,
    *,
    out: Path,
    flip: bool = False,
    tag: str | None = None,
    rank: Rank | None = None,
    progress: bool = True,
) -> tuple[list[RunDir], list[PredictSummary]]:
    """Predict every (cell, benchmark); the model is loaded once by the caller."""
    runs, summaries = [], []
    pruners = [pipeline.pruner(cell.method, **cell.settings) for cell in cells]  # bad settings fail before any work
    for pruner in pruners:
        for loaded in benchmarks:
            run = prepare_run(pipeline, loaded, data_root, pruner, generation, flip=flip, out=out, tag=tag)
            summaries.append(predict_items(pipeline, run, loaded, data_root, pruner, generation, flip=flip,
                                           rank=rank, progress=progress))
            runs.append(run)
    return runs, summaries
