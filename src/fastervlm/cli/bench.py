"""`fastervlm bench`: time, memory, KV cache and FLOPs per method and budget, as a table, JSON and a PNG plot."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastervlm.cli.common import check_device, settings_by_method, split_list

GEOMETRIES = ("video-llava-7b",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="measure speed, peak memory, KV cache and FLOPs of methods x budgets",
        description="Times every pipeline stage (video decode, vision encoder, [CLS] scoring, projector, LLM prefill = "
        "time to first token, decode per token) over repeated runs after a warm-up, interleaved across configurations, "
        "with peak memory (CUDA max allocated, or on the CPU the peak RSS of a process of its own per configuration, "
        "the weights shared), the KV cache after the "
        "prefill and the analytic LLM prefill FLOPs (docs/flops.md), against the unpruned row; plus our [CLS] "
        "extraction next to the original's (eager, every attention map returned). fp32 on the CPU.")
    model = bench.add_argument_group("model (default: the demo's tiny model)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", help="checkpoint folder to measure")
    source.add_argument("--geometry", choices=GEOMETRIES, help="random weights with this model's real widths, heads and "
                        "token counts but --llm-layers / --vision-layers layers, built in memory")
    model.add_argument("--llm-layers", type=int, default=2, metavar="N", help="with --geometry (default %(default)s)")
    model.add_argument("--vision-layers", type=int, default=3, metavar="M", help="with --geometry; the feature layer is the "
                       "penultimate one (default %(default)s)")
    model.add_argument("--video-tower", metavar="DIR", help="with --model: the LanguageBind_Video_merge folder")
    model.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    what = bench.add_argument_group("configurations")
    what.add_argument("--methods", nargs="+", metavar="METHOD",
                      help="methods to measure, space- or comma-separated (default: fastervlm and fastv); the "
                      "unpruned row is always measured. METHOD:KEY=VALUE is an alias of --method-option "
                      "METHOD:KEY=VALUE, e.g. fastv:layer=3")
    what.add_argument("--method-option", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                      help="a setting of a measured method, e.g. fastv:layer=3 (repeatable); without METHOD: every "
                      "measured method that takes the setting")
    budget = what.add_mutually_exclusive_group()
    budget.add_argument("--reductions", nargs="+", metavar="R",
                        help="fractions dropped, space- or comma-separated (default 0 0.25 0.5 0.75 0.9 0.95 1: the "
                        "seed's 2048 / 1536 / 1024 / 512 / 208 / 104 / 0 tokens on Video-LLaVA)")
    budget.add_argument("--keep", nargs="+", metavar="L", help="per-frame budgets instead of --reductions")
    run = bench.add_argument_group("runs")
    run.add_argument("--video", metavar="FILE", help="video to decode and answer about (default: a synthetic 320x240 clip)")
    run.add_argument("--question", help="question asked (default: a fixed one)")
    run.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs per configuration (default %(default)s)")
    run.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per configuration (default %(default)s)")
    run.add_argument("--max-new-tokens", type=int, default=8, metavar="N", help="tokens generated per run (default %(default)s)")
    run.add_argument("--no-reference", action="store_true", help="skip the [CLS] extraction comparison")
    run.add_argument("--in-process", action="store_true", help="measure every configuration in this process (faster "
                     "on the CPU, but the peak RSS is then not per configuration)")
    out = bench.add_argument_group("output")
    out.add_argument("--out-dir", default="bench-out", metavar="DIR", help="where bench.json and bench.png go (default %(default)s)")
    out.add_argument("--json", action="store_true", help="print the JSON instead of the tables")
    out.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(handler=run_bench)


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
    from fastervlm.bench import (DEFAULT_REDUCTIONS, QUESTION, ModelSource, check_run_settings, check_targets,
                                 default_configs, plot, result_json, run_benchmark)
    from fastervlm.methods import create_pruner

    check_run_settings(args.warmup, args.repeats, args.max_new_tokens)
    names, settings = parse_methods(args.methods, args.method_option)
    reductions = split_list(args.reductions, float, "--reductions") or DEFAULT_REDUCTIONS
    keeps = split_list(args.keep, int, "--keep") if args.keep else None
    configs = default_configs(names, reductions, keeps=keeps, method_settings=settings)
    for config in configs:
        create_pruner(config.method, **config.settings)  # bad names and settings fail now, not in a worker
    check_device(args.device)
    if args.geometry:
        source = ModelSource.video_llava_7b(args.llm_layers, args.vision_layers, device=args.device)
    elif args.model:
        source = ModelSource(checkpoint=args.model, video_tower=args.video_tower, device=args.device)
    else:
        source = ModelSource.tiny(device=args.device)
    result = run_benchmark(source, configs, video=args.video, question=args.question or QUESTION, warmup=args.warmup,
                           repeats=args.repeats, max_new_tokens=args.max_new_tokens, reference=not args.no_reference,
                           isolate=False if args.in_process else None, progress=not args.no_progress)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result_json(result)
    (out_dir / "bench.json").write_text(json.dumps(data, indent=2))
    plot(result, out_dir / "bench.png")
    if args.json:
        print(json.dumps(data))
    else:
        print_tables(result, check_targets(result), markdown=args.markdown)
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'}", file=sys.stderr)
    return 0


# ----- tables --------------------------------------------------------------------------------------------------
def _ms(stat: Any) -> str:
    return "-" if stat is None else f"{1e3 * stat.median:.1f}"


def _ms_spread(stat: Any) -> str:
    return "-" if stat is None else f"{1e3 * stat.median:.1f} ({1e3 * stat.low:.0f}-{1e3 * stat.high:.0f})"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


Columns = list[tuple[str, Callable[[Any], str]]]

KEY_COLUMNS: Columns = [
    ("method", lambda r: r.label),
    ("visual tokens", lambda r: str(r.visual_tokens)),
]
TIME_COLUMNS: Columns = [
    ("prompt", lambda r: str(r.prompt_tokens)),
    ("decode video", lambda r: _ms(r.timings.get("decode_video"))),
    ("vision encoder", lambda r: _ms(r.timings.get("vision_encoder"))),
    ("[CLS] scoring", lambda r: _ms(r.timings.get("cls_scoring"))),
    ("projector", lambda r: _ms(r.timings.get("projector"))),
    ("LLM prefill (min-max)", lambda r: _ms_spread(r.timings.get("llm_prefill"))),
    ("TTFT (min-max)", lambda r: _ms_spread(r.timings.get("time_to_first_token"))),
    ("decode per token", lambda r: _ms(r.timings.get("decode_per_token"))),
]
COST_COLUMNS: Columns = [
    ("peak MiB (+run)", lambda r: f"{_mib(r.memory.peak_bytes)} (+{_mib(r.memory.added_bytes)})"),
    ("KV MiB", lambda r: "-" if r.kv_cache_bytes is None else f"{r.kv_cache_bytes / 2**20:.1f}"),
    ("prefill GFLOPs", lambda r: "-" if r.llm_prefill_flops is None else f"{r.llm_prefill_flops / 1e9:.4g}"),
    ("FLOPs ratio", lambda r: _times(r.flops_ratio)),
    ("prefill speedup", lambda r: _times(r.prefill_speedup)),
    ("TTFT speedup", lambda r: _times(r.ttft_speedup)),
]
ROW_COLUMNS: Columns = KEY_COLUMNS + TIME_COLUMNS + COST_COLUMNS
"""One row per configuration (Markdown); the terminal shows it as two tables, times and costs, so that it fits.
Times in ms: median over the timed runs, (min-max) where shown."""

EXTRACTION_COLUMNS: Columns = [
    ("[CLS] extraction", lambda e: e.name),
    ("layers run", lambda e: str(e.layers_run)),
    ("encoder ms (min-max)", lambda e: _ms_spread(e.encoder)),
    ("[CLS] scoring ms", lambda e: f"{1e3 * e.cls_scoring.median:.3f}"),
    ("attention data MiB", lambda e: f"{e.attention_bytes / 2**20:.2f}"),
    ("peak MiB (+run)", lambda e: f"{_mib(e.memory.peak_bytes)} (+{_mib(e.memory.added_bytes)})"),
    ("max abs score diff", lambda e: "-" if e.max_score_difference is None else f"{e.max_score_difference:.1e}"),
    ("how", lambda e: e.description),
]


def print_tables(result: Any, targets: list[Any], *, markdown: bool = False) -> None:
    header = (f"{result.model} on {result.device}, {result.dtype}, {result.threads} threads, torch {result.torch_version}; "
              f"{result.warmup} warm-up + {result.repeats} timed runs, {result.max_new_tokens} new tokens; "
              f"memory: {result.rows[0].memory.kind if result.rows else '-'}"
              + (f"; load average {result.load_average[0]} before, {result.load_average[1]} after"
                 if result.load_average else ""))
    tables = [("configurations", ROW_COLUMNS, result.rows), ("[CLS] extraction", EXTRACTION_COLUMNS, result.extraction)]
    target_rows = [(t.name, t.measured, {True: "met", False: "NOT met", None: "n/a"}[t.met]) for t in targets]
    if markdown:
        print(header + "; times in ms: median (min-max)\n")
        for _, columns, rows in tables:
            if rows:
                print(_markdown([c for c, _ in columns], [[f(r) for _, f in columns] for r in rows]) + "\n")
        print(_markdown(["target", "measured", "result"], target_rows))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=max(Console().width, 160))
        console.print(header)
        terminal_tables = [
            ("configurations: time", KEY_COLUMNS + TIME_COLUMNS, result.rows, "times in ms: median (min-max)"),
            ("configurations: memory, FLOPs, speedup over none", KEY_COLUMNS + COST_COLUMNS, result.rows, None),
            ("[CLS] extraction", EXTRACTION_COLUMNS, result.extraction, "times in ms: median (min-max)"),
        ]
        for title, columns, rows, caption in terminal_tables:
            if rows:
                table = Table(title=title, caption=caption)
                cells = [[f(row) for _, f in columns] for row in rows]
                for number, (name, _) in enumerate(columns):
                    if name == "how":  # the prose column wraps
                        table.add_column(name, overflow="fold")
                        continue
                    # headers wrap at spaces to the widest cell, so that the numbers never break
                    width = max(max(len(line[number]) for line in cells), *(len(word) for word in name.split()))
                    table.add_column(textwrap.fill(name, width), no_wrap=True)
                for line in cells:
                    table.add_row(*line)
                console.print(table)
        targets_table = Table(title="targets")
        for name in ("target", "measured", "result"):
            targets_table.add_column(name, overflow="fold")
        for row in target_rows:
            targets_table.add_row(*row)
        console.print(targets_table)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
