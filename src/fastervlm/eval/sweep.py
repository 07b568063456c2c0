"""A grid of methods x reductions x benchmarks with one loaded model: predict every cell (plus the unpruned
baseline), then judge and report. Every cell is an ordinary run directory, so a stopped sweep resumes by
running the same command, and cells can be judged or reported on their own.

The cells of one benchmark are predicted together, video by video (`predict.predict_configurations`): each video
is decoded once and the vision tower runs once for every cell (all budgets of every method share it); each cell's
predictions equal those of running it alone.

The failure policy: everything that can be checked is checked before the model loads (methods, settings,
budgets, the judge's key); predictions are written as they are made; a judge failure still writes the report
(it shows what is missing), then is raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import LoadedBenchmark
from fastervlm.eval.metrics import Mode
from fastervlm.eval.predict import (PredictSummary, Rank, distributed, predict_configurations, prepare_run,
                                    rank_device)
from fastervlm.eval.rundir import RunDir


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid: a method and its settings (the budget included)."""

    method: str
    settings: dict[str, Any]


def grid(methods: list[str], reductions: list[float], options: dict[str, Any] | None = None, baseline: bool = True,
         scoped: dict[str, dict[str, Any]] | None = None) -> list[Cell]:
    """The baseline first, then every method at every reduction, most tokens first. `options` go to every method,
    `scoped[method]` to that method only. A cell that would keep every token (the baseline method, a reduction of
    0) is the baseline's and is not repeated; the registry decides which those are."""
    from fastervlm.methods import baseline_method, is_baseline

    cells = [Cell(baseline_method(), {})] if baseline else []
    for reduction in sorted(reductions):
        for method in methods:
            settings = {"reduction": reduction, **(options or {}), **(scoped or {}).get(method, {})}
            if not is_baseline({"method": method, **settings}):
                cells.append(Cell(method, settings))
    return cells


def check_cells(cells: list[Cell]) -> None:
    """Every cell's method, settings and budget, before the model loads (a wrong one would otherwise turn every
    item of its runs into an error record, hours later)."""
    from fastervlm.methods import create_pruner

    for cell in cells:
        create_pruner(cell.method, **cell.settings).per_frame_budget(1)  # the budget's range does not depend on N


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
    batch_size: int | None = None,
    frame_cache: Any = None,
    prefetch: int = 2,
) -> tuple[list[RunDir], list[PredictSummary]]:
    """Predict every (cell, benchmark), all cells of a benchmark in one pass; the model is loaded once by the
    caller. Runs and summaries come cell by cell, benchmark by benchmark within a cell."""
    pruners = [pipeline.pruner(cell.method, **cell.settings) for cell in cells]  # bad settings fail before any work
    for pruner in pruners:
        if pipeline.num_patches is not None:  # a budget this model cannot keep, too (not an error per item)
            pruner.per_frame_budget(pipeline.num_patches)
        pipeline.check_method(pruner)
    found: dict[tuple[int, int], tuple[RunDir, PredictSummary]] = {}
    for b, loaded in enumerate(benchmarks):
        runs = [prepare_run(pipeline, loaded, data_root, pruner, generation, flip=flip, out=out, tag=tag)
                for pruner in pruners]
        summaries = predict_configurations(pipeline, loaded, data_root, list(zip(runs, pruners)), generation,
                                           flip=flip, rank=rank, prefetch=prefetch, progress=progress,
                                           batch_size=batch_size, frame_cache=frame_cache)
        for c, (run, summary) in enumerate(zip(runs, summaries)):
            found[c, b] = (run, summary)
    ordered = [found[c, b] for c in range(len(cells)) for b in range(len(benchmarks))]
    return [run for run, _ in ordered], [summary for _, summary in ordered]


@dataclass
class Sweep:
    """What a sweep runs: the benchmarks' items, the grid, decoding, where the runs go, and the judge (None: no
    judging) and report settings."""

    benchmarks: list[LoadedBenchmark]
    data_root: Path
    cells: list[Cell]
    generation: Any
    out: Path
    judge: Any = None
    """A JudgeSettings, or None to predict only."""
    mode: Mode = "strict"
    plot: bool = True
    flip: bool = False
    tag: str | None = None
    api_key: str | None = field(default=None, repr=False)
    batch_size: int | None = None
    """Items per generate call (None: the device's default, `grouped.default_batch_size`)."""
    frame_cache: Any = None
    """A `frame_cache.FrameCache` for the sampled frames, or None."""


def run_sweep(sweep: Sweep, load_model: Callable[[str | None], Any], *, device: str | None = None,
              progress: bool = True, say: Callable[[str], None] = print, show: Callable[[str], None] = print) -> list[RunDir]:
    """Predict every cell on every benchmark (each rank its shard, under torchrun), then, on rank 0, judge and
    report into `sweep.out`. `load_model(device)` loads the model once per process. `say` gets progress lines,
    `show` the report's Markdown table (before its files are written). Returns the runs (rank 0; [] elsewhere)."""
    check_cells(sweep.cells)
    if sweep.judge is not None:  # a missing key fails before hours of predicting
        from fastervlm.eval.judge_client import api_key_from_env

        sweep.api_key = sweep.api_key or api_key_from_env()
    with distributed() as rank:
        pipeline = load_model(rank_device(device))
        runs, summaries = sweep_predict(pipeline, sweep.benchmarks, sweep.data_root, sweep.cells, sweep.generation,
                                        out=sweep.out, flip=sweep.flip, tag=sweep.tag, rank=rank, progress=progress,
                                        batch_size=sweep.batch_size, frame_cache=sweep.frame_cache)
        for summary in summaries:
            say(summary.line() if rank.rank == 0 else f"[rank {rank.rank}] {summary.line()}")
        if rank.rank != 0:
            return []
    _judge_and_report(sweep, runs, progress=progress, say=say, show=show)
    return runs


def _judge_and_report(sweep: Sweep, runs: list[RunDir], *, progress: bool, say: Callable[[str], None],
                      show: Callable[[str], None]) -> None:
    """Judge (when asked), then always write the report; a judge failure is raised after the report is written."""
    from fastervlm.eval.judge import judge_runs
    from fastervlm.eval.report import report_runs

    failure = None
    if sweep.judge is not None:
        try:
            judge_runs(runs, sweep.judge, api_key=sweep.api_key, progress=progress, report=say)
        except FasterVLMError as err:
            failure = err  # the report still shows what there is, and what is missing
    judge_model = None if sweep.judge is None else sweep.judge.model
    report_runs([run.path for run in runs], sweep.out, judge_model=judge_model, mode=sweep.mode, plot=sweep.plot,
                show=show, say=say)
    if failure is not None:
        raise failure
