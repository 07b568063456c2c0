"""Paired tests between two runs of the same benchmark: is run B really different from run A, or is it noise?"""

from __future__ import annotations

import os

from fastervlm.errors import FasterVLMError
from fastervlm.eval.metrics import Mode, PairedTest, paired_test
from fastervlm.eval.reading import judged_models, read_run
from fastervlm.eval.rundir import BATCH_SIZE, RunDir, config_differences


def _run_to_compare(path: str | os.PathLike) -> RunDir:
    """The run at `path`, or an error naming what is wrong with it (missing folder, not a run)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise FasterVLMError(f"{path}: no such run folder; give a folder made by `fastervlm eval predict`.")
    run.config()  # raises when the folder is not a run directory
    return run


def _compare_judge_model(run_a: RunDir, run_b: RunDir) -> str:
    """The only judge model both runs have valid judgments from, or an error naming the real problem."""
    models_a, models_b = judged_models(run_a), judged_models(run_b)
    for run, models in ((run_a, models_a), (run_b, models_b)):
        if not models:
            raise FasterVLMError(f"{run.path} is not judged yet: run `fastervlm eval judge {run.path}` first.")
    common = sorted(set(models_a) & set(models_b))
    if not common:
        raise FasterVLMError(
            f"the two runs have no judge model in common ({run_a.path}: {', '.join(models_a)}; {run_b.path}: "
            f"{', '.join(models_b)}): judge both with the same model (`fastervlm eval judge --judge-model ...`)."
        )
    if len(common) > 1:
        raise FasterVLMError(f"both runs were judged by several models ({', '.join(common)}): choose one with --judge-model.")
    return common[0]


def compare_runs(a: str | os.PathLike, b: str | os.PathLike, *, judge_model: str | None = None, mode: Mode = "strict") -> PairedTest:
    """Paired tests of run B against run A on the items both have judged."""
    run_a, run_b = _run_to_compare(a), _run_to_compare(b)
    bench_a, bench_b = run_a.config()["benchmark"]["name"], run_b.config()["benchmark"]["name"]
    if bench_a != bench_b:
        raise FasterVLMError(f"{a} is {bench_a} and {b} is {bench_b}: paired tests need the same items.")
    if judge_model is None:
        judge_model = _compare_judge_model(run_a, run_b)
    ra, rb = read_run(run_a, judge_model, mode), read_run(run_b, judge_model, mode)
    if ra.metrics is None or rb.metrics is None:
        raise FasterVLMError(f"both runs need judgments from {judge_model}: run `fastervlm eval judge` on them first.")
    return paired_test(ra.metrics, rb.metrics)


def batch_size_only(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """A note when the two runs' configurations differ in their batch size and nothing else (None otherwise):
    then their predictions differ only where a batch's floating-point sums tipped a near-tie, not by the method."""
    config_a, config_b = _run_to_compare(a).config(), _run_to_compare(b).config()
    differences = config_differences(config_a, config_b)
    if len(differences) != 1 or not differences[0].startswith(f"{BATCH_SIZE}:"):
        return None
    return (f"note: the two runs differ only in their batch size ({config_a.get(BATCH_SIZE)} and "
            f"{config_b.get(BATCH_SIZE)} items per generate call), so every difference between them comes from how "
            "floating-point sums round in a batch (docs/evaluation.md, \"What batching changes\"), not from the method.")
