"""`fastervlm eval predict | judge | report | compare | sweep`: the video-QA evaluation harness.

Argument parsing only; the work is in fastervlm.eval (imported inside the handlers, so no torch at import).
The run-directory layout these commands share is described in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastervlm.cli.common import add_generation_arguments, add_method_arguments, add_model_arguments
from fastervlm.cli.parser import deprecate
from fastervlm.eval.benchmarks import benchmark_names  # the packaged benchmark files: cheap, no torch
from fastervlm.eval.judge_client import DEFAULT_JUDGE_MODEL  # no openai import until a Judge is made

DEFAULT_REDUCTIONS = (0.5, 0.75, 0.9, 0.95)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="video-QA evaluation: predict, judge, report, compare, sweep",
        description="Rebuild the seed's results table: predict answers on TGIF/MSVD/MSRVTT/ActivityNet-QA "
        "(resumable, shardable with torchrun), judge them with an OpenAI-compatible LLM, report Acc/Score.")
    commands = parser.add_subparsers(dest="eval_command", metavar="STEP", required=True)
    _add_predict(commands)
    _add_judge(commands)
    _add_report(commands)
    _add_compare(commands)
    _add_sweep(commands)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="answer every question of a benchmark (resumes; shards under torchrun)",
                                  description="Answer a benchmark's questions, one JSON line per item, resuming "
                                  "where a previous run stopped. Under torchrun every rank takes its own shard.")
    _add_data_arguments(predict)
    deprecate(predict.add_argument(
        "--benchmarks", "--benchmark", required=True, nargs="+", action="extend", metavar="NAME",
        help=f"{', '.join(benchmark_names())} or a .json/.toml benchmark file; several (space- or comma-separated, "
        "or the flag repeated) share one model load"), "--benchmark")
    add_model_arguments(predict)
    add_method_arguments(predict)
    add_generation_arguments(predict)
    _add_output_arguments(predict, run_dir=True)
    _add_scale_arguments(predict)
    predict.add_argument("--prefetch", type=int, default=2, help="videos decoded ahead of the model (default %(default)s; 0: none)")
    predict.set_defaults(handler=run_predict)


def _add_judge(commands: argparse._SubParsersAction) -> None:
    judge = commands.add_parser("judge", help="judge predictions with an OpenAI-compatible LLM (cached, retried)",
                                description="Judge every prediction under the given run folders with the original's "
                                "prompt. The endpoint comes from OPENAI_BASE_URL (or --base-url), the key from "
                                "OPENAI_API_KEY. Judgments are cached: judging again costs nothing.")
    judge.add_argument("paths", nargs="+", help="run folders, or folders that contain run folders")
    _add_judge_arguments(judge)
    _add_progress_argument(judge)
    judge.set_defaults(handler=run_judge)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="the seed's table (Markdown, CSV, JSON, PNG) from run folders",
                                 description="Per benchmark Acc/Score, averages relative to the unpruned baseline, "
                                 "paired tests, and a plot of relative accuracy vs visual tokens.")
    report.add_argument("paths", nargs="+", help="run folders, or folders that contain run folders")
    _add_report_arguments(report, judges="the only one present")
    report.add_argument("--out", help="folder for report.md/.csv/.json/.png (default: the first path)")
    report.set_defaults(handler=run_report)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="paired tests between two runs on the same items",
                                  description="McNemar's exact test on accuracy and a paired test on scores: is run B "
                                  "really different from run A, or is it noise?")
    compare.add_argument("run_a", metavar="RUN_A", help="a run folder (e.g. the unpruned baseline): the reference")
    compare.add_argument("run_b", metavar="RUN_B", help="a run folder of the same benchmark; differences are B - A")
    _add_report_arguments(compare, judges="the only one both have", plot=False)
    compare.set_defaults(handler=run_compare)


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="methods x reductions x benchmarks: predict, judge and report",
                                description="Run the unpruned baseline and every method at every reduction on every "
                                "benchmark with one loaded model, then judge and report. Resumes like predict.")
    _add_data_arguments(sweep)
    sweep.add_argument("--benchmarks", nargs="+", metavar="NAME", default=benchmark_names(),
                       help="space- or comma-separated names or benchmark files (default: all four)")
    add_model_arguments(sweep)
    sweep.add_argument("--methods", nargs="+", metavar="METHOD",
                       help="space- or comma-separated methods (default: the method a budget alone selects; see "
                       "`fastervlm methods`)")
    sweep.add_argument("--reductions", nargs="+", metavar="R", default=[str(r) for r in DEFAULT_REDUCTIONS],
                       help="space- or comma-separated fractions of visual tokens dropped (default "
                       f"{' '.join(f'{r:g}' for r in DEFAULT_REDUCTIONS)})")
    sweep.add_argument("--no-baseline", action="store_true", help="skip the unpruned baseline runs")
    sweep.add_argument("--method-option", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                       help="a method setting (repeatable): to every method of the grid, or with METHOD: to that one, "
                       "e.g. --method-option fastv:layer=3")
    add_generation_arguments(sweep)
    _add_scale_arguments(sweep)
    _add_output_arguments(sweep)
    sweep.add_argument("--no-judge", action="store_true", help="predict only")
    _add_judge_arguments(sweep)
    _add_report_arguments(sweep)
    sweep.set_defaults(handler=run_sweep)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", required=True, type=Path,
                       help="folder with TGIF_Zero_Shot_QA/, MSVD_Zero_Shot_QA/, ... (e.g. eval/GPT_Zero_Shot_QA)")
    group.add_argument("--limit", type=int, help="only the first N questions (1000 on the full files = the seed's "
                       "subsets); a larger N later grows the same run")


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    from fastervlm.eval.grouped import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, HALF_PRECISION_BATCH_SIZE  # no torch

    group = parser.add_argument_group("speed (greedy predictions do not depend on these, but for the batch size at a near-tie)")
    group.add_argument("--batch-size", type=int, metavar="N",
                       help=f"questions per generate call, from one video or several (default: {CPU_BATCH_SIZE} on the "
                       f"CPU and {CUDA_BATCH_SIZE} on a GPU in fp32, where a greedy answer differs from one at a time only at "
                       "a near-tie, docs/evaluation.md; "
                       f"{HALF_PRECISION_BATCH_SIZE} in fp16/bf16, where a batch flips some greedy answers; sampled "
                       "answers always depend on it; a kill loses at most the batch in flight)")
    group.add_argument("--frame-cache", choices=["on", "off"], default="on",
                       help="keep each video's sampled frames on disk, so a later run or sweep skips decoding (default "
                       "%(default)s; folder: $FASTERVLM_FRAME_CACHE, else $FASTERVLM_CACHE/frames or "
                       "~/.cache/fastervlm/frames; FASTERVLM_FRAME_CACHE=off turns it off too)")
    group.add_argument("--frame-cache-size", type=float, default=2.0, metavar="GIB",
                       help="the frame cache's bound; least recently used videos are dropped (default %(default)s GiB)")


def _frame_cache(args: argparse.Namespace) -> Any:
    """The frame cache the flags ask for (None: off), checked before the model loads."""
    from fastervlm.errors import FasterVLMError
    from fastervlm.frame_cache import default_frame_cache

    if args.batch_size is not None and args.batch_size < 1:
        raise FasterVLMError(f"--batch-size is a number of questions per generate call: 1 or more (got {args.batch_size}).")
    if not args.frame_cache_size >= 0:
        raise FasterVLMError(f"--frame-cache-size is a size in GiB: 0 or more (got {args.frame_cache_size:g}).")
    return None if args.frame_cache == "off" else default_frame_cache(int(args.frame_cache_size * 2**30))


def _check_writable(folder: Path, flag: str) -> None:
    """The folder the runs go into can take files, checked before the model loads and without creating it: a file
    is written and removed in it, or in its nearest existing parent."""
    import tempfile

    from fastervlm.errors import FasterVLMError
    from fastervlm.eval.storage import writing

    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise FasterVLMError(f"{flag} {folder}: {existing} is a file, not a folder; give a folder for the runs.")
    with writing(existing, f"make it writable, or give another {flag}."):
        with tempfile.TemporaryFile(dir=existing):
            pass


def _add_output_arguments(parser: argparse.ArgumentParser, *, run_dir: bool = False) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder for all runs: <out>/<model>/<benchmark>/<run name>")
    if run_dir:
        where.add_argument("--run-dir", type=Path, help="this run's folder (one benchmark only) instead")
    parser.add_argument("--tag", help="appended to the run folder name, to keep runs that differ in other settings apart")
    _add_progress_argument(parser)


def _add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("judge")
    group.add_argument("--judge-model", default=DEFAULT_JUDGE_MODEL, help="judge model name (default %(default)s, the original's)")
    group.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else api.openai.com)")
    group.add_argument("--concurrency", type=int, default=8, help="requests in flight (default %(default)s)")
    group.add_argument("--max-attempts", type=int, default=5, help="tries per item, transport errors and bad replies "
                       "alike (default %(default)s)")
    group.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    group.add_argument("--dead-after", type=float, default=60.0, metavar="SECONDS",
                       help="stop when the endpoint has answered nothing for this long and two requests in a row "
                       "could not connect or timed out (default %(default)s); a server that answers is waited for")
    group.add_argument("--judge-temperature", type=float, default=0.0, help="(default %(default)s; the original used the API default, 1)")
    deprecate(group.add_argument("--judge-cache", "--cache-dir", type=Path, metavar="DIR", help="judgment cache (default "
                                 "$FASTERVLM_CACHE/judge or ~/.cache/fastervlm/judge)"), "--cache-dir")


def _add_report_arguments(parser: argparse.ArgumentParser, *, judges: str | None = None, plot: bool = True) -> None:
    """judges: the default of --judge-model when the command reads existing judgments (None: it judges itself)."""
    parser.add_argument("--metrics", choices=["strict", "compat"], default="strict",
                        help="strict: exact parsing (default); compat: the original's counting, quirks included")
    if judges is not None:
        parser.add_argument("--judge-model", help=f"which judge's results to use (default: {judges})")
    if plot:
        parser.add_argument("--no-plot", action="store_true", help="skip report.png")


def _judge_settings(args: argparse.Namespace) -> Any:
    from fastervlm.eval.judge import JudgeSettings

    return JudgeSettings(model=args.judge_model, base_url=args.base_url, temperature=args.judge_temperature,
                         max_attempts=args.max_attempts, concurrency=args.concurrency, timeout=args.judge_timeout,
                         dead_after=args.dead_after, cache_dir=args.judge_cache)


def _load_benchmarks(names: list[str], data_root: Path, limit: int | None, flag: str) -> list:
    from fastervlm.cli.common import split_list
    from fastervlm.eval.benchmarks import get_benchmark, load_items

    return [load_items(get_benchmark(name), data_root, limit) for name in split_list(names, flag=flag)]


def _say(rank: int, text: str) -> None:
    print(text if rank == 0 else f"[rank {rank}] {text}", file=sys.stderr)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    from fastervlm.cli.common import (check_device, check_files, generation_settings, load_model, method_settings,
                                      split_list)
    from fastervlm.errors import FasterVLMError
    from fastervlm.eval.predict import distributed, predict_items, prepare_run, rank_device

    if args.prefetch < 0:
        raise FasterVLMError(f"--prefetch is a number of videos decoded ahead: 0 or more (got {args.prefetch}).")
    if args.run_dir and len(split_list(args.benchmarks)) > 1:
        raise FasterVLMError("--run-dir names one run: give one benchmark to --benchmarks with it, or use --out.")
    check_files(args)
    loaded = _load_benchmarks(args.benchmarks, args.data_root, args.limit, "--benchmarks")  # bad data fails before the model loads
    frame_cache = _frame_cache(args)
    method, settings = method_settings(args)
    generation = generation_settings(args)
    check_device(args.device)
    _check_writable(args.run_dir or args.out, "--run-dir" if args.run_dir else "--out")
    with distributed() as rank:
        args.device = rank_device(args.device)
        pipeline = load_model(args)
        pruner = pipeline.pruner(method, **settings)
        if pipeline.num_patches is not None:  # a budget out of range fails here, not as an error per item
            pruner.per_frame_budget(pipeline.num_patches)
        pipeline.check_method(pruner)  # a method this model cannot run, too
        for benchmark in loaded:
            run = prepare_run(pipeline, benchmark, args.data_root, pruner, generation, flip=args.flip, out=args.out,
                              run_dir=args.run_dir, tag=args.tag)
            summary = predict_items(pipeline, run, benchmark, args.data_root, pruner, generation, flip=args.flip,
                                    rank=rank, prefetch=args.prefetch, progress=not args.no_progress,
                                    batch_size=args.batch_size, frame_cache=frame_cache)
            _say(rank.rank, summary.line())
            if rank.rank == 0 and summary.merged_errors:
                _say(0, f"warning: {summary.merged_errors} items have no prediction (see their 'error' field); "
                     "`eval report` counts them. Fix the videos and run the same command again to retry them.")
    return 0


def run_judge(args: argparse.Namespace) -> int:
    from fastervlm.eval.judge import judge_runs
    from fastervlm.eval.rundir import find_runs_under

    runs = find_runs_under(args.paths)
    judge_runs(runs, _judge_settings(args), progress=not args.no_progress, report=_stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from fastervlm.eval.report import report_runs

    out = Path(args.out) if args.out else Path(args.paths[0])
    report_runs(args.paths, out, judge_model=args.judge_model, mode=args.metrics, plot=not args.no_plot,
                show=print, say=_stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from fastervlm.eval.compare import batch_size_only
    from fastervlm.eval.report import compare_runs

    t = compare_runs(args.run_a, args.run_b, judge_model=args.judge_model, mode=args.metrics)
    note = batch_size_only(args.run_a, args.run_b)
    if note:
        print(note)
    print(f"{t.common} items judged in both runs ({args.metrics} metrics)")
    if t.accuracy_diff is not None:
        print(f"accuracy B - A: {100 * t.accuracy_diff:+.2f} points; A-only correct {t.a_only_correct}, "
              f"B-only correct {t.b_only_correct}; McNemar exact p = {t.accuracy_p:.4g}")
    if t.score_diff is not None:
        ci = f" [{t.score_diff_ci[0]:+.3f}, {t.score_diff_ci[1]:+.3f}]" if t.score_diff_ci else ""
        print(f"score B - A: {t.score_diff:+.3f}{ci} (95% CI); paired test p = {t.score_p:.4g}")
    return 0


@contextmanager
def _errors_named(command: str) -> Iterator[None]:
    """Errors raised while `command` runs start with its name (`eval sweep: ...`)."""
    from fastervlm.cli.common import list_parameter_names
    from fastervlm.errors import BudgetError, FasterVLMError

    try:
        yield
    except BudgetError as err:  # the sweep's budgets come from its list flag
        raise FasterVLMError(f"{command}: {err.render(list_parameter_names())}") from None
    except FasterVLMError as err:
        raise FasterVLMError(f"{command}: {err}") from None


def _method_options(texts: list[str], methods: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """--method-option values: (settings for every method, settings by the method their METHOD: prefix names)."""
    from fastervlm.cli.common import parse_setting
    from fastervlm.errors import FasterVLMError

    common: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    for text in texts:
        method, key, value = parse_setting(text)
        if method is not None and method not in methods:
            raise FasterVLMError(f"--method-option {text} is for {method}, which is not in --methods "
                                 f"({', '.join(methods)}): add it there or drop the option.")
        (scoped.setdefault(method, {}) if method else common)[key] = value
    return common, scoped


def run_sweep(args: argparse.Namespace) -> int:
    with _errors_named("eval sweep"):
        return _sweep(args)


def _sweep(args: argparse.Namespace) -> int:
    from fastervlm.cli.common import check_device, check_files, generation_settings, load_model, split_list
    from fastervlm.eval.sweep import Sweep, grid, run_sweep
    from fastervlm.methods import default_method

    check_files(args)
    methods = split_list(args.methods, flag="--methods") or [default_method(budget_given=True)]
    common, scoped = _method_options(args.method_option, methods)
    cells = grid(methods, split_list(args.reductions, float, flag="--reductions"), common, baseline=not args.no_baseline,
                 scoped=scoped)
    plan = Sweep(
        benchmarks=_load_benchmarks(args.benchmarks, args.data_root, args.limit, "--benchmarks"),
        data_root=args.data_root, cells=cells, generation=generation_settings(args), out=args.out,
        judge=None if args.no_judge else _judge_settings(args), mode=args.metrics, plot=not args.no_plot,
        flip=args.flip, tag=args.tag, batch_size=args.batch_size, frame_cache=_frame_cache(args),
    )
    check_device(args.device)
    _check_writable(args.out, "--out")

    def load(device: str | None) -> Any:
        args.device = device  # under torchrun on GPUs: this rank's card
        return load_model(args)

    run_sweep(plan, load, device=args.device, progress=not args.no_progress, say=_stderr, show=print)
    return 0
