"""`fastervlm bench`'s terminal tables fit the terminal: at 80 and 120 columns no line is longer, every cell is
printed whole once per table, each part of a split table names its rows, and a wide terminal keeps one part."""

from __future__ import annotations

import re

import pytest

from fastervlm.bench.configs import default_configs
from fastervlm.bench.results import BenchResult, BenchRow, ExtractionRow, Memory, Stat, add_speedups
from fastervlm.bench.tables import (EXTRACTION_COLUMNS, KEY_COLUMNS, TIME_COLUMNS, print_eval_table, print_tables,
                                    split_columns, table_width)
from fastervlm.bench.targets import check_targets


def _stat(ms: float) -> Stat:
    return Stat(ms / 1e3, 0.9 * ms / 1e3, 1.3 * ms / 1e3)


def _result() -> BenchResult:
    """The default configurations (the unpruned row, then each featured method at 0.5 and 0.9) with 7B-like
    numbers: four-digit milliseconds, GiB of memory, TFLOPs."""
    rows = []
    for n, config in enumerate(default_configs()):
        reduction = config.settings.get("reduction", 0.0)
        tokens = round(2048 * (1 - reduction))
        timings = {stage: _stat(ms) for stage, ms in (("decode_video", 312.4), ("vision_encoder", 1234.5),
                                                       ("cls_scoring", 0.8), ("selection", 1.2), ("projector", 25.3),
                                                       ("llm_prefill", 4321.0 * tokens / 2048 + n),
                                                       ("time_to_first_token", 5900.0 * tokens / 2048 + 1600),
                                                       ("decode_per_token", 45.6))}
        rows.append(BenchRow(config.label, config.method, config.settings, "vision", tokens, tokens + 40, 8, timings,
                             Memory(15_000 * 2**20, 13_500 * 2**20, "cuda"), 1_024 * 2**20 * tokens // 2048,
                             int(8.4e12 * tokens / 2048), baseline=n == 0))
    add_speedups(rows)
    extraction = [ExtractionRow(name, how, layers, _stat(1234.5), _stat(0.8), 12 * 2**20, Memory(2**31, 2**30, "cuda"),
                                diff) for name, how, layers, diff in (
        ("reference (eager, all layers)", "the original: output_attentions on every layer, row 0 read", 24, 3e-7),
        ("ours (q/k of one layer)", "the feature layer's [CLS] query and keys, one product per head", 23, None))]
    return BenchResult("Video-LLaVA-7B", "NVIDIA H100 80GB HBM3", "float16", 16, "2.13.0", "synthetic", 1, 3, 8, rows,
                       extraction, llm_width=4096)


@pytest.mark.parametrize("columns", [80, 120])
def test_tables_fit_the_terminal(capsys, monkeypatch, columns: int) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    result = _result()
    print_tables(result, check_targets(result))
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "…" not in "\n".join(lines)  # nothing cut short to fit
    body = [line for line in lines if line.startswith("│")]
    for row in result.rows:
        mine = [line for line in body if line.startswith(f"│ {row.label} ")]
        parts = len([line for line in lines if line.strip().startswith("configurations: time")])
        assert len(mine) >= 2 and len(mine) == parts + len(
            [line for line in lines if line.strip().startswith("configurations: memory")])  # one line per part
        for _, cell in TIME_COLUMNS[1:] + KEY_COLUMNS[1:]:
            assert sum(f" {cell(row)} " in line for line in mine) >= 1, cell(row)  # every number whole
    for row in result.extraction:
        mine = [line for line in body if line.startswith(f"│ {row.name} ")]
        for _, cell in EXTRACTION_COLUMNS[1:-1]:
            assert sum(f" {cell(row)} " in line for line in mine) == 1, cell(row)
    if columns == 80:
        assert re.search(r"configurations: time \(1 of [2-9]\)", "\n".join(lines))  # split, and says so


def test_a_wide_terminal_keeps_each_table_whole(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    result = _result()
    print_tables(result, check_targets(result))
    out = capsys.readouterr().out
    assert "(1 of" not in out and max(len(line) for line in out.splitlines()) <= 400


def test_split_columns_keeps_the_keys_and_the_order() -> None:
    widths = [20, 6, 10, 10, 10, 10, 10]
    parts = split_columns(widths, 2, 60)
    assert all(part[:2] == [0, 1] for part in parts)
    assert [i for part in parts for i in part[2:]] == [2, 3, 4, 5, 6]
    assert all(table_width([widths[i] for i in part]) <= 60 for part in parts)
    assert len(parts) == 3  # 20 + 6 + two 10s: 3 x 4 + 1 + 46 = 59; a third would take 72
    assert split_columns(widths, 2, 1000) == [list(range(7))]


def test_the_eval_table_fits_too(capsys, monkeypatch) -> None:
    from fastervlm.bench.configs import PIPELINE_STAGES
    from fastervlm.bench.harness import EvalBenchResult, EvalRunRow

    monkeypatch.setenv("COLUMNS", "80")
    rows = [EvalRunRow(name, 32, 123.4, encodings, {s: 12.3 for s in PIPELINE_STAGES}, "clock", identical=identical,
                       speedup=speedup, round_seconds=[123.4, 130.2, 119.9], speedup_range=spread)
            for name, speedup, encodings, identical, spread in (("per-item loop", 1.0, 96, None, None),
                                                                 ("harness", 1.22, 32, 32, (1.1, 1.31)))]
    result = EvalBenchResult("tiny", "cpu", "float32", 2, "2.13.0", "4 videos x 8 questions", ["fastervlm r=0.9"], 8,
                             rows, rounds=3, round_loads=[1.52, 1.7, 1.61])
    print_eval_table(result)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("yes (32/32)" in line for line in lines)
