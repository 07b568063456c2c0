"""The benchmark's tables: one row per configuration (terminal: two tables, times and costs; Markdown: one), the
[CLS] extraction rows, the targets, and the `--eval` table of the harness against the loop.

On a terminal every line fits its width (`shutil.get_terminal_size`): a table too wide for it is printed in parts,
each repeating the table's key columns (the configuration), its columns otherwise in order; numbers never break,
headers break between words and prose columns wrap."""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastervlm.bench.configs import PIPELINE_STAGES


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
    ("selection", lambda r: _ms(r.timings.get("selection"))),
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


def _header(result: Any) -> str:
    """The line above the tables: the model, the machine, the load on it."""
    load = result.load_average
    return (f"{result.model} on {result.device}, {result.dtype}, {result.threads} threads, torch {result.torch_version}"
            + (f"; load average {load[0]} before, {load[1]} after" if load else ""))


def print_tables(result: Any, targets: list[Any], *, markdown: bool = False) -> None:
    """`fastervlm bench`'s output: the configurations, the [CLS] extraction rows, the targets."""
    header = (f"{_header(result)}; {result.warmup} warm-up + {result.repeats} timed runs, {result.max_new_tokens} new "
              f"tokens; memory: {result.rows[0].memory.kind if result.rows else '-'}")
    target_rows = [[t.name, t.measured, {True: "met", False: "NOT met", None: "n/a"}[t.met]] for t in targets]
    targets_table = Table("targets", [(name, None) for name in ("target", "measured", "result")], target_rows)
    keys = len(KEY_COLUMNS)
    if markdown:
        tables = [Table("configurations", ROW_COLUMNS, result.rows, keys=keys),
                  Table("[CLS] extraction", EXTRACTION_COLUMNS, result.extraction)]
        _print(header + "; times in ms: median (min-max)", [*tables, targets_table], markdown=True)
    else:
        caption = "times in ms: median (min-max)"
        _print(header, [
            Table("configurations: time", KEY_COLUMNS + TIME_COLUMNS, result.rows, caption, keys),
            Table("configurations: memory, FLOPs, speedup over none", KEY_COLUMNS + COST_COLUMNS, result.rows, None, keys),
            Table("[CLS] extraction", EXTRACTION_COLUMNS, result.extraction, caption),
            targets_table,
        ], markdown=False)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)


@dataclass
class Table:
    """A table to print: its columns (a column without a function takes its cell from a row that is a list)."""

    title: str
    columns: Sequence[tuple[str, Callable[[Any], str] | None]]
    rows: Sequence[Any]
    caption: str | None = None
    keys: int = 1
    """Leading columns that name the row, repeated in every part of a table split to fit the terminal."""


PROSE_COLUMNS = frozenset({"how", "target", "measured", "result"})
"""Columns whose text may wrap (the others hold numbers, which must never break)."""


def terminal_width() -> int:
    """The terminal's columns ($COLUMNS, else the terminal's size, else 80)."""
    return shutil.get_terminal_size().columns


def _print(header: str, tables: list[Table], *, markdown: bool) -> None:
    """Print the non-empty tables under the header: as Markdown, or as rich terminal tables that fit the terminal."""
    tables = [table for table in tables if table.rows]
    if markdown:
        print(header + "\n")
        for table in tables:
            print(_markdown([c for c, _ in table.columns], _cells(table.columns, table.rows)) + "\n")
        return
    from rich.console import Console

    console = Console(width=terminal_width())
    console.print(header)
    for table in tables:
        cells = _cells(table.columns, table.rows)
        names = [name for name, _ in table.columns]
        widths = [_min_width(name, [line[n] for line in cells]) for n, name in enumerate(names)]
        parts = split_columns(widths, table.keys, console.width)
        for number, part in enumerate(parts, 1):
            title = table.title if len(parts) == 1 else f"{table.title} ({number} of {len(parts)})"
            caption = table.caption if number == len(parts) else None
            console.print(_rich_table(title, caption, [names[i] for i in part], [widths[i] for i in part],
                                      [[line[i] for i in part] for line in cells]))


def _min_width(name: str, cells: list[str]) -> int:
    """The narrowest a column can be: its longest header word, and its widest cell unless it is prose."""
    word = max(len(w) for w in name.split())
    if name in PROSE_COLUMNS:
        return max(word, *(len(w) for cell in cells for w in cell.split()))
    return max(word, *(len(cell) for cell in cells))


def table_width(widths: Sequence[int]) -> int:
    """Characters a rich table with these column widths takes: a border and one space of padding each side."""
    return sum(widths) + 3 * len(widths) + 1


def split_columns(widths: Sequence[int], keys: int, room: int) -> list[list[int]]:
    """The column indices of each part: the key columns, then as many of the others, in order, as fit in `room`
    characters (at least one per part)."""
    parts: list[list[int]] = []
    for index in range(keys, len(widths)):
        if parts and table_width([widths[i] for i in [*parts[-1], index]]) <= room:
            parts[-1].append(index)
        else:
            parts.append([*range(keys), index])
    return parts or [list(range(len(widths)))]


def _rich_table(title: str, caption: str | None, names: list[str], widths: list[int], cells: list[list[str]]) -> Any:
    """A rich table whose number columns never wrap; headers wrap at spaces to their column's width."""
    from rich.table import Table as RichTable

    table = RichTable(title=title, caption=caption)
    for name, width in zip(names, widths):
        if name in PROSE_COLUMNS:
            table.add_column(name, overflow="fold", min_width=width)
        else:
            table.add_column(textwrap.fill(name, width, break_on_hyphens=False), no_wrap=True, min_width=width)
    for line in cells:
        table.add_row(*line)
    return table


def _cells(columns: Sequence[tuple[str, Callable[[Any], str] | None]], rows: Sequence[Any]) -> list[list[str]]:
    return [[row[n] if f is None else f(row) for n, (_, f) in enumerate(columns)] for row in rows]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----- bench --eval -------------------------------------------------------------------------------------------------
def _per_item(row: Any, stage: str) -> str:
    seconds = row.stage_seconds.get(stage)
    return "-" if seconds is None else f"{1e3 * seconds / row.items:.1f}"


def _identical(row: Any) -> str:
    if row.identical is None:
        return "-"
    verdict = "yes" if row.identical == row.items and not row.errors else "NO"
    return f"{verdict} ({row.identical}/{row.items})" + (f", {row.errors} errors" if row.errors else "")


EVAL_COLUMNS: Columns = [
    ("run", lambda r: r.name),
    ("items", lambda r: str(r.items)),
    ("seconds (rounds)", lambda r: f"{r.seconds:.1f} ({', '.join(f'{s:.1f}' for s in r.round_seconds)})"),
    ("items/s", lambda r: f"{r.items_per_second:.3g}"),
    ("speedup (min-max)", lambda r: _times(r.speedup) + ("" if r.speedup_range is None else
                                                           f" ({r.speedup_range[0]:.2f}-{r.speedup_range[1]:.2f})")),
    ("video encodings", lambda r: str(r.video_encodings)),
    *[(stage.replace("_", " ").replace("cls", "[CLS]"), lambda r, s=stage: _per_item(r, s)) for stage in PIPELINE_STAGES],
    ("identical to the loop", _identical),
]
"""Stage columns: ms per item, summed over the items (the harness's stages overlap: it decodes ahead)."""


def print_eval_table(result: Any, *, markdown: bool = False) -> None:
    """`fastervlm bench --eval`'s output: the loop and the harness, side by side."""
    loads = ", ".join("-" if load is None else f"{load:.2f}" for load in result.round_loads)
    header = (f"{_header(result)}; {result.data}; {', '.join(result.configurations)}; greedy, "
              f"{result.max_new_tokens} new tokens; {result.rounds} rounds, alternating which runs first (load "
              f"average at each round's start: {loads}); speedup: the median of the rounds' ratios")
    caption = "stage columns: ms per item, summed over the items (stages overlap where the harness decodes ahead)"
    _print(header, [Table("bench --eval: the harness against the per-item loop", EVAL_COLUMNS, result.rows, caption)],
           markdown=markdown)
    stage_source = next((r.stage_source for r in result.rows if r.identical is not None), None)
    verdict = "identical" if result.all_identical else "NOT identical"
    print(f"predictions {verdict}; the harness's stage times from its {stage_source}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
