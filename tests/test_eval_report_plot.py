"""The report for a paper: intervals inside the score's 0-5 range and accuracy's 0-100%, report.png's error bars
are the CSV's intervals, and every column of the table and the CSV holds its numbers in one format."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import pytest
from eval_helpers import make_run
from fake_openai_server import FakeOpenAI

from fastervlm.eval.judge import JudgeSettings, judge_runs
from fastervlm.eval.metrics import Z95, compute, mean_interval
from fastervlm.eval.report import build_report, write_report
from fastervlm.eval.report_plot import report_figure
from fastervlm.eval.rundir import find_runs

FASTERVLM = {"method": "fastervlm", "keep": None, "reduction": 0.9, "global_budget": False}


def _answers(correct: list[bool], prefix: str = "q") -> dict[str, tuple[str, str | None]]:
    """The fake judge says yes/5 when the answer is in the prediction, else no/1."""
    return {f"{prefix}{i}": (f"ans{i}", f"ans{i}" if ok else "wrong") for i, ok in enumerate(correct)}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Two benchmarks, a baseline right on 9 of 10 items (its naive score interval crosses 5) and a pruned run
    with a prefill ten times smaller (TFLOPs of two magnitudes in one column)."""
    root = tmp_path / "runs"
    nine = [True] * 9 + [False]
    make_run(root / "tiny/msvd/none", _answers(nine), benchmark="msvd", flops=[4e12] * 10)
    make_run(root / "tiny/tgif/none", _answers([True, True, False, True]), benchmark="tgif", flops=[4e12] * 4)
    make_run(root / "tiny/msvd/fastervlm_r0.9", _answers([True, False] * 5), benchmark="msvd", method=FASTERVLM,
             tokens=208, flops=[4.5e11] * 10)
    make_run(root / "tiny/tgif/fastervlm_r0.9", _answers([True, False, False, False]), benchmark="tgif",
             method=FASTERVLM, tokens=208, flops=[4.5e11] * 4)
    with FakeOpenAI() as server:
        judge_runs(find_runs(root), JudgeSettings(base_url=server.url, cache_dir=tmp_path / "cache"), api_key="k",
                   progress=False, report=lambda _: None)
    return root


def test_a_score_interval_that_would_cross_5_is_clipped_to_the_range() -> None:
    scores = [5.0] * 9 + [1.0]
    mean, sd = 4.6, math.sqrt(sum((s - 4.6) ** 2 for s in scores) / 9)
    naive = (mean - Z95 * sd / math.sqrt(10), mean + Z95 * sd / math.sqrt(10))
    assert naive[1] > 5  # the normal interval alone leaves the scale
    assert mean_interval(scores, bounds=(0.0, 5.0)) == pytest.approx((naive[0], 5.0))
    assert mean_interval([0.0] * 9 + [4.0], bounds=(0.0, 5.0))[0] == 0.0  # and at the bottom
    metrics = compute({f"q{i}": {"pred": "yes", "score": s} for i, s in enumerate(scores)}, "strict")
    assert 0.0 <= metrics.score_ci[0] <= metrics.score <= metrics.score_ci[1] == 5.0
    assert 0.0 <= metrics.accuracy_ci[0] <= metrics.accuracy_ci[1] <= 1.0  # Wilson, 10/10: up to 1 exactly


def test_report_intervals_stay_in_range(runs: Path) -> None:
    report = build_report([runs])
    for result in report.results:
        low, high = result.metrics.score_ci
        assert 0.0 <= low <= result.metrics.score <= high <= 5.0
        low, high = result.metrics.accuracy_ci
        assert 0.0 <= low <= result.metrics.accuracy <= high <= 1.0
    baseline_msvd = next(r for r in report.results if r.row == "none" and r.benchmark == "msvd")
    assert baseline_msvd.metrics.score_ci[1] == 5.0  # the clipped case


def test_the_plot_shows_the_csv_s_intervals_as_error_bars(runs: Path, tmp_path: Path) -> None:
    from matplotlib.container import ErrorbarContainer

    report = build_report([runs])
    files = write_report(report, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    figure = report_figure(report)
    panels = {ax.get_title(): ax for ax in figure.axes}
    for benchmark, title in report.benchmarks:
        accuracy_axes = [ax for ax in figure.axes if ax.get_title() == title and "accuracy" in ax.get_ylabel()]
        score_axes = [ax for ax in figure.axes if ax.get_title() == title and "score" in ax.get_ylabel()]
        assert len(accuracy_axes) == len(score_axes) == 1
        for ax, column, factor, top in ((accuracy_axes[0], "accuracy", 100.0, 100.0),
                                        (score_axes[0], "score", 1.0, 5.0)):
            bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_yerr]
            assert len(bars) == 2  # the baseline and fastervlm
            drawn = sorted((seg[0][0], seg[0][1], seg[1][1]) for c in bars for seg in c.lines[2][0].get_segments())
            expected = sorted((float(r["visual_tokens"]), factor * float(r[f"{column}_ci_low"]),
                               factor * float(r[f"{column}_ci_high"])) for r in rows if r["benchmark"] == benchmark)
            flat = [value for point in drawn for value in point]
            assert flat == pytest.approx([value for point in expected for value in point], abs=5e-5 * factor)
            bottom, ceiling = ax.get_ylim()
            assert bottom < 0 and top < ceiling < 1.05 * top  # the whole range, and only a little more
            assert all(0 <= low <= high <= top for _, low, high in drawn)
    assert "average over benchmarks" in panels  # the relative accuracy, as before
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


NUMBER = re.compile(r"^([+-]?)(\d+)(?:\.(\d+))?(e[+-]\d+)?(%?)$")


def _format_of(cell: str) -> tuple[int, bool, str] | None:
    """(decimals, scientific, suffix) of a number cell (flags such as † removed), None for text or a dash."""
    match = NUMBER.match(cell.strip().rstrip("†"))
    if match is None:
        return None
    return len(match.group(3) or ""), match.group(4) is not None, match.group(5)


def _one_format_per_column(rows: list[list[str]], header: list[str]) -> None:
    for number, name in enumerate(header):
        formats = {f for row in rows if (f := _format_of(row[number])) is not None}
        assert len(formats) <= 1, f"column {name!r} mixes formats {formats}: {[row[number] for row in rows]}"


def test_each_column_holds_one_number_format(runs: Path, tmp_path: Path) -> None:
    report = build_report([runs])
    lines = [line for line in report.markdown().splitlines() if line.startswith("| ")]
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = table[0], [row for row in table[1:] if not row[0].startswith("*") and len(row) == len(table[0])]
    assert len(body) == 2
    _one_format_per_column(body, header)
    assert [row[-1] for row in body] == ["4.000", "0.450"]  # TFLOPs: three digits for the smallest, one format
    tests = [row for row in table if len(row) == 4 and "(p=" in row[2]]
    assert tests and all(re.fullmatch(r"[+-]\d+\.\d \(p=(\d\.\d{3}|<0\.001)\); [+-]\d\.\d\d \(p=(\d\.\d{3}|<0\.001)\)",
                                      cell) for row in tests for cell in row[2:])
    rows = list(csv.reader(io.StringIO(report.csv())))
    _one_format_per_column(rows[1:], rows[0])
    by_name = dict(zip(rows[0], rows[1]))
    assert re.fullmatch(r"\d\.\d{4}", by_name["accuracy"]) and re.fullmatch(r"\d\.\d{4}", by_name["score_ci_high"])


def test_an_interval_ending_a_rounding_error_inside_its_value_draws() -> None:
    """0% accuracy whose Wilson bound comes out as -1e-15: matplotlib refuses negative error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastervlm.eval.report_plot import Series, _draw

    figure, ax = plt.subplots()
    line = Series("run", "C0", {"accuracy": [(208, 0.0, (5.6e-15, 30.0)), (2048, 50.0, (20.0, 80.0))]})
    _draw(ax, line, "accuracy")  # raised "'yerr' must not contain negative values" before
    (bars,) = ax.containers[0].lines[2]
    lows = [segment[0][1] for segment in bars.get_segments()]
    assert lows == [0.0, 20.0]  # the first bar starts at its value
    plt.close(figure)
