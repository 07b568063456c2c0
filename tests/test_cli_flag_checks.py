"""Flags checked before any work: demo's --max-new-tokens, predict's --prefetch."""

from __future__ import annotations

from fastervlm.cli import main


def test_demo_refuses_zero_new_tokens_before_writing_anything(capsys, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert main(["demo", "--cache-dir", str(cache), "--max-new-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens must be at least 1 (got 0)" in err and "Traceback" not in err
    assert not cache.exists()  # no tiny checkpoint written, no model loaded


def test_predict_refuses_a_negative_prefetch_before_reading_data(capsys, tmp_path) -> None:
    code = main(["eval", "predict", "--benchmarks", "msvd", "--data-root", str(tmp_path / "no-data"),
                 "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "runs"), "--prefetch", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--prefetch" in err and "got -1" in err and "no-data" not in err
    assert not (tmp_path / "runs").exists()
