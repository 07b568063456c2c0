"""`fastervlm bench`: time, memory, KV cache and FLOPs per method and budget, as a table, JSON and a PNG plot."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastervlm.cli.common import MODEL_HELP, TINY_MODEL, check_device, settings_by_method, split_list
from fastervlm.cli.parser import deprecate

GEOMETRIES = ("video-llava-7b",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="measure speed, peak memory, KV cache and FLOPs of methods x budgets (--eval: the evaluation "
        "harness against a per-item loop; --decode: video decoding)",
        description="Times every pipeline stage (video decode, vision encoder, [CLS] scoring, selection, projector, "
        "LLM prefill = time to first token, decode per token) over repeated runs after a warm-up, interleaved across "
        "configurations, with peak memory (CUDA max allocated, or on the CPU the peak RSS of a process of its own per "
        "configuration, the weights shared), the KV cache after the prefill and the analytic LLM prefill FLOPs "
        "(docs/flops.md), against the unpruned row; plus our [CLS] extraction next to the original's (eager, every "
        "attention map returned). fp32 on the CPU. --model tiny: a quick check on the demo's tiny model (under a "
        "minute on 2 cores). --eval and --decode are other measurements (docs/benchmark.md).")
    mode = bench.add_argument_group("what to measure (default: methods x budgets)").add_mutually_exclusive_group()
    mode.add_argument("--eval", action="store_true", help="answer a synthetic benchmark (--videos x --questions) "
                      "with a plain per-item loop and with the evaluation harness; print items/s of both, the time "
                      "per stage, the tower runs and whether the predictions are identical. Several --reductions: "
                      "the harness runs them as a sweep")
    mode.add_argument("--decode", action="store_true", help="time sampling 8 frames from long generated videos: "
                      "seek vs scan vs decord (--size, --duration, --fps, --gops, --containers, --repeats)")
    _model_flags(bench)
    what = bench.add_argument_group("configurations")
    what.add_argument("--methods", nargs="+", metavar="METHOD",
                      help="methods to measure, space- or comma-separated (default: fastervlm and fastv; with --eval "
                      "the registry's default method); the unpruned row is always measured (not with --eval). "
                      "METHOD:KEY=VALUE is an alias of --method-option METHOD:KEY=VALUE, e.g. fastv:layer=3")
    what.add_argument("--method-option", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                      help="a setting of a measured method, e.g. fastv:layer=3 (repeatable); without METHOD: every "
                      "measured method that takes the setting")
    budget = what.add_mutually_exclusive_group()
    budget.add_argument("--reductions", nargs="+", metavar="R",
                        help="fractions dropped, space- or comma-separated (default 0.5 0.9: 1024 and 208 tokens on "
                        "Video-LLaVA; with --eval 0.9; the seed's whole column is 0 0.25 0.5 0.75 0.9 0.95 1)")
    deprecate(budget.add_argument("--keeps", "--keep", nargs="+", metavar="L",
                                  help="per-frame budgets instead of --reductions"), "--keep")
    run = bench.add_argument_group("runs")
    run.add_argument("--video", metavar="FILE", help="video to decode and answer about (default: a synthetic 320x240 clip)")
    run.add_argument("--question", help="question asked (default: a fixed one)")
    run.add_argument("--warmup", type=int, metavar="N", help="untimed runs per configuration (default 1)")
    run.add_argument("--repeats", type=int, metavar="N", help="timed runs per configuration (default 3; with --eval "
                     "rounds of the loop and the harness in alternating order, default 3; with --decode rounds per "
                     "video, default 5)")
    run.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens generated per answer (default 8)")
    run.add_argument("--no-reference", action="store_true", help="skip the [CLS] extraction comparison")
    run.add_argument("--in-process", action="store_true", help="measure every configuration in this process (faster "
                     "on the CPU, but the peak RSS is then not per configuration)")
    _data_flags(bench)
    out = bench.add_argument_group("output")
    deprecate(out.add_argument("--out", "--out-dir", default=DEFAULT_OUT_DIR, metavar="DIR", help="folder for bench.json "
                               "and bench.png (--eval: bench-eval.json; --decode: bench-decode.json) (default "
                               "%(default)s)"), "--out-dir")
    out.add_argument("--json", action="store_true", help="print the JSON instead of the tables")
    out.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(handler=run_bench)


DEFAULT_OUT_DIR = "bench-out"


def _model_flags(bench: argparse.ArgumentParser) -> None:
    model = bench.add_argument_group("model (one of --model and --geometry; without either, the tiny model, with a "
                                     "note: deprecated)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR|tiny", help=f"{MODEL_HELP}, to measure")
    source.add_argument("--geometry", choices=GEOMETRIES, help="random weights with this model's real widths, heads and "
                        "token counts but --llm-layers / --vision-layers layers, built in memory")
    model.add_argument("--llm-layers", type=int, default=2, metavar="N", help="with --geometry (default %(default)s)")
    model.add_argument("--vision-layers", type=int, default=3, metavar="M", help="with --geometry; the feature layer is the "
                       "penultimate one (default %(default)s)")
    model.add_argument("--video-tower", metavar="DIR", help="with --model: the LanguageBind_Video_merge folder")
    model.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    model.add_argument("--no-share-prefix", action="store_true", help="prefill every prompt whole (--eval: to measure "
                       "what sharing each video's prompt prefix saves)")
    model.add_argument("--no-static-cache", action="store_true", help="on CUDA, decode on the dynamic KV cache without "
                       "a compiled step")
    model.add_argument("--backend", choices=("transformers", "vllm"), help="--eval: also run the harness with its LLM "
                       "stage on this engine (vllm: docs/vllm.md), beside the transformers harness and the loop")
    model.add_argument("--engine-option", action="append", metavar="KEY=VALUE", help="with --backend vllm: a vLLM "
                       "engine option, repeatable")


def _data_flags(bench: argparse.ArgumentParser) -> None:
    data = bench.add_argument_group("--eval and --decode: the generated videos")
    data.add_argument("--videos", type=int, metavar="V", help="--eval: videos (default 4)")
    data.add_argument("--batch-size", type=int, metavar="N", help="--eval: the harness's --batch-size (default: its "
                      "own default for the device, docs/evaluation.md); the per-item loop always answers one at a time")
    data.add_argument("--questions", type=int, metavar="Q", help="--eval: questions per video (default 8; MSVD-QA's "
                      "1K subset has ~29)")
    data.add_argument("--size", metavar="WxH", help="frame size (default --eval 480x360, like MSVD; --decode 640x360)")
    data.add_argument("--duration", type=float, metavar="S", help="seconds per video (default --eval 10, like MSVD's "
                      "clips; --decode 180)")
    data.add_argument("--fps", type=int, help="frame rate (default 30)")
    data.add_argument("--gops", nargs="+", metavar="N", help="--decode: keyframe intervals (default 12 60 250; --eval "
                      "uses 60)")
    data.add_argument("--containers", nargs="+", metavar="EXT", help="--decode: containers, of mp4 mkv mov (default mp4 mkv)")
    data.add_argument("--video-dir", metavar="DIR", help="--decode: keep the generated videos here for the next run")


def parse_methods(specs: list[str] | None, options: list[str] = ()) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """--methods and --method-option -> the method names and each one's settings.

    ['fastervlm', 'fastv:layer=3'] is ['fastervlm', 'fastv'] with --method-option fastv:layer=3; the older
    'fastv:layer=3,seed=1' (settings after a comma) still works. An unscoped option goes to every measured method
    that takes it, and must fit at least one.
    """
    from fastervlm.methods import featured_methods

    names: list[str] = []
    aliases: list[str] = []
    for token in split_list(specs or featured_methods(), flag="--methods"):
        name, colon, _ = token.partition(":")
        if "=" in name and names:  # 'fastv:layer=3,seed=1': a further setting of the method before it
            aliases.append(f"{names[-1]}:{token}")
            continue
        if name not in names:
            names.append(name)
        if colon:
            aliases.append(token)
    settings = {name: {} for name in names}
    for flag, given in (("--methods", aliases), ("--method-option", list(options))):
        for scope, values in settings_by_method(given, flag).items():
            for name in _targets(scope, values, names, flag):
                settings[name].update({k: v for k, v in values.items() if scope is not None or _takes(name, k)})
    return names, {name: values for name, values in settings.items() if values}


def _takes(method: str, setting: str) -> bool:
    from fastervlm.methods import has_setting

    return has_setting(method, setting)


def _targets(scope: str | None, values: dict[str, Any], names: list[str], flag: str) -> list[str]:
    """The measured methods a group of settings goes to: its METHOD: scope, else every one that takes them."""
    from fastervlm.errors import BudgetError

    if scope is not None:
        if scope not in names:
            raise BudgetError(f"{flag} {scope}:...: {scope} is not measured; add it to --methods ({' '.join(names)}).")
        return [scope]
    for key in values:
        if not any(_takes(name, key) for name in names):
            raise BudgetError(f"{flag} {key}=...: none of the measured methods ({', '.join(names)}) has a setting "
                              f"{key}; `fastervlm methods` lists each method's settings.")
    return names


def run_bench(args: argparse.Namespace) -> int:
    """The mode the flags ask for; budget errors name bench's own list flags (--keeps, --reductions)."""
    from fastervlm.cli.common import list_parameter_names
    from fastervlm.errors import BudgetError, FasterVLMError

    try:
        return _run_mode(args)
    except BudgetError as err:
        raise FasterVLMError(err.render(list_parameter_names())) from None


def _run_mode(args: argparse.Namespace) -> int:
    _check_mode_flags(args)
    if args.decode:
        return _run_decode(args)
    if args.eval:
        return _run_eval(args)
    from fastervlm.bench import QUESTION, check_run_settings, check_targets, plot, result_json, run_benchmark
    from fastervlm.bench.tables import print_tables

    repeats, warmup = _or(args.repeats, 3), _or(args.warmup, 1)
    check_run_settings(warmup, repeats, _or(args.max_new_tokens, MAX_NEW_TOKENS))
    configs = _configs(args)
    source = _source(args)
    result = run_benchmark(source, configs, video=args.video, question=args.question or QUESTION, warmup=warmup,
                           repeats=repeats, max_new_tokens=_or(args.max_new_tokens, MAX_NEW_TOKENS), reference=not args.no_reference,
                           isolate=False if args.in_process else None, progress=not args.no_progress)
    out_dir = _out_dir(args)
    data = result_json(result)
    (out_dir / "bench.json").write_text(json.dumps(data, indent=2))
    plot(result, out_dir / "bench.png")
    if args.json:
        print(json.dumps(data))
    else:
        print_tables(result, check_targets(result), markdown=args.markdown)
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'}", file=sys.stderr)
    return 0


MODE_NAMES = {"": "the methods x budgets mode (no --eval, no --decode)", "eval": "--eval", "decode": "--decode"}
FLAG_MODES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("videos", "questions", "batch_size"), ("eval",)),
    **dict.fromkeys(("gops", "containers", "video_dir"), ("decode",)),
    **dict.fromkeys(("size", "duration", "fps"), ("eval", "decode")),
    **dict.fromkeys(("video", "question", "no_reference", "in_process", "warmup"), ("",)),
    **dict.fromkeys(("methods", "method_option", "reductions", "keeps", "max_new_tokens", "model", "geometry",
                     "video_tower", "device", "no_share_prefix", "no_static_cache"), ("", "eval")),
    **dict.fromkeys(("backend", "engine_option"), ("eval",)),
}
"""Which modes each flag applies to (flags whose default is None, False or [] when not given)."""


def _mode(args: argparse.Namespace) -> str:
    return "eval" if args.eval else "decode" if args.decode else ""


def _check_mode_flags(args: argparse.Namespace) -> None:
    """A flag of another mode is refused rather than silently ignored."""
    from fastervlm.errors import FasterVLMError

    mode = _mode(args)
    for flag, modes in FLAG_MODES.items():
        if getattr(args, flag) not in (None, False, []) and mode not in modes:
            where = " or ".join(MODE_NAMES[m] for m in modes)
            raise FasterVLMError(f"--{flag.replace('_', '-')} applies to {where} only; leave it out with "
                                 f"{MODE_NAMES[mode]}.")


MAX_NEW_TOKENS = 8


def _or(value: Any, default: Any) -> Any:
    """A flag's value, or its mode's default when it was not given."""
    return default if value is None else value


def _configs(args: argparse.Namespace, default_reductions: Any = None, baseline: bool = True) -> list[Any]:
    """The configurations asked for, each checked by the registry before any model is built."""
    from fastervlm.bench import DEFAULT_REDUCTIONS, default_configs
    from fastervlm.cli.common import check_budget_range
    from fastervlm.methods import create_pruner

    names, settings = parse_methods(args.methods, args.method_option)
    reductions = split_list(args.reductions, float, "--reductions") or default_reductions or DEFAULT_REDUCTIONS
    keeps = split_list(args.keeps, int, "--keeps") if args.keeps else None
    configs = default_configs(names, reductions, keeps=keeps, method_settings=settings, baseline=baseline)
    for config in configs:  # bad names, settings and budgets fail now, not in a worker
        check_budget_range(create_pruner(config.method, **config.settings))
    return configs


def _source(args: argparse.Namespace) -> Any:
    """What to measure, after every check that needs no model (the files the flags name, --device)."""
    from fastervlm.bench import ModelSource
    from fastervlm.cli.common import check_files, tiny_fallback
    from fastervlm.errors import FasterVLMError

    if not args.geometry:
        tiny_fallback(args, "bench")
    check_files(args)
    check_device(args.device)
    if args.geometry:
        source = ModelSource.video_llava_7b(args.llm_layers, args.vision_layers, device=args.device)
    elif args.model != TINY_MODEL:
        source = ModelSource(checkpoint=args.model, video_tower=args.video_tower, device=args.device)
    else:
        source = ModelSource.tiny(device=args.device)
    if args.engine_option and args.backend != "vllm":
        raise FasterVLMError("--engine-option sets the vLLM engine: give it with --backend vllm.")
    return replace(source, share_prefix=not args.no_share_prefix, static_cache=False if args.no_static_cache else None,
                   backend=args.backend or "transformers", engine_settings=tuple(args.engine_option or ()) or None)


def _out_dir(args: argparse.Namespace) -> Path:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _size(args: argparse.Namespace, default: tuple[int, int]) -> tuple[int, int]:
    from fastervlm.errors import FasterVLMError

    if args.size is None:
        return default
    width, x, height = args.size.lower().partition("x")
    if not (x and width.isdigit() and height.isdigit()):
        raise FasterVLMError(f"--size {args.size!r}: give WIDTHxHEIGHT, e.g. 480x360.")
    return int(width), int(height)


def _run_eval(args: argparse.Namespace) -> int:
    """--eval: the harness against the per-item loop on a synthetic benchmark."""
    from fastervlm.bench.harness import run_eval_benchmark
    from fastervlm.bench.synthetic import VideoShape
    from fastervlm.bench.tables import print_eval_table
    from fastervlm.methods import default_method

    if args.methods is None:
        args.methods = [default_method(budget_given=True)]
    configs = _configs(args, default_reductions=[EVAL_REDUCTION], baseline=False)
    width, height = _size(args, (480, 360))
    shape = VideoShape(width, height, _or(args.duration, 10.0), _or(args.fps, 30))
    result = run_eval_benchmark(_source(args), configs, videos=_or(args.videos, 4), questions=_or(args.questions, 8),
                                shape=shape, max_new_tokens=_or(args.max_new_tokens, MAX_NEW_TOKENS),
                                batch_size=args.batch_size, rounds=_or(args.repeats, 3), progress=not args.no_progress)
    path = _out_dir(args) / "bench-eval.json"
    path.write_text(json.dumps(result.to_json(), indent=2))
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print_eval_table(result, markdown=args.markdown)
    print(f"wrote {path}", file=sys.stderr)
    return 0 if result.all_identical else 1


EVAL_REDUCTION = 0.9
"""--eval's budget when none is given: 208 visual tokens on Video-LLaVA, the seed table's featured budget."""


DECODE_CONTAINERS = ("mp4", "mkv", "mov")
"""The containers --decode remuxes its H.264 videos into."""


def _run_decode(args: argparse.Namespace) -> int:
    """--decode: seek vs scan vs decord on long generated videos."""
    from dataclasses import asdict

    from fastervlm.bench.decode import format_table, run_decode_benchmark

    from fastervlm.bench.synthetic import VideoShape
    from fastervlm.errors import FasterVLMError

    width, height = _size(args, (640, 360))
    if _or(args.repeats, 5) < 1:
        raise FasterVLMError("--repeats must be at least 1.")
    VideoShape(width, height, _or(args.duration, 180.0), _or(args.fps, 30)).check()
    gops = split_list(args.gops, int, "--gops") or (12, 60, 250)
    containers = split_list(args.containers, str, "--containers") or ("mp4", "mkv")
    if min(gops) < 1:
        raise FasterVLMError(f"--gops are keyframe intervals in frames: 1 or more (got {min(gops)}).")
    if unknown := sorted(set(containers) - set(DECODE_CONTAINERS)):
        raise FasterVLMError(f"--containers {' '.join(unknown)}: choose from {' '.join(DECODE_CONTAINERS)}.")
    rows = run_decode_benchmark(
        seconds=_or(args.duration, 180.0), width=width, height=height, fps=_or(args.fps, 30), gops=gops,
        containers=containers, repeats=_or(args.repeats, 5), video_dir=args.video_dir,
        progress=not args.no_progress)
    path = _out_dir(args) / "bench-decode.json"
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    print(json.dumps([asdict(row) for row in rows]) if args.json else format_table(rows))
    print(f"wrote {path}", file=sys.stderr)
    return 0
