"""`fastervlm bench`'s terminal tables: every number on one line, within the console width (the terminal's width;
narrower terminals: tests/test_bench_tables_width.py)."""

from __future__ import annotations

import re

from fastervlm.cli import main


def test_terminal_tables_keep_numbers_whole(tmp_path, tiny_checkpoint, synthetic_video, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # a terminal wide enough for each table in one part
    code = main(["bench", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--methods", "fastervlm", "--reductions", "0.9", "--warmup", "0", "--repeats", "1",
                 "--max-new-tokens", "1", "--in-process", "--no-reference", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 160
    assert "configurations: time" in out and "configurations: memory, FLOPs, speedup over none" in out
    for label in ("none", "fastervlm reduction=0.9"):
        rows = [line for line in lines if line.startswith(f"│ {label} ")]
        assert len(rows) == 2  # one row in each table, none wrapped onto a second line
        assert len(re.findall(r"\d+\.\d \(\d+-\d+\)", rows[0])) == 2  # LLM prefill and TTFT, median (min-max)
        assert re.search(r"x\d+\.\d\d\s+│\s+x\d+\.\d\d\s+│$", rows[1])  # prefill and TTFT speedups, whole


def test_no_progress_hides_the_bar(tmp_path, tiny_checkpoint, synthetic_video, capsys) -> None:
    argv = ["bench", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
            "--methods", "fastervlm", "--keep", "4", "--warmup", "0", "--repeats", "1", "--max-new-tokens", "1",
            "--in-process", "--no-reference", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    assert "bench:" in capsys.readouterr().err  # the bar, by default
    assert main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "bench:" not in err and "wrote" in err
