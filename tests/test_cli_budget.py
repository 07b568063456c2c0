"""A pruning request without a budget: refused before the model loads, or run with a note that nothing is pruned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastervlm.cli import main


def answer(checkpoint: Path, video: Path, *extra: str) -> list[str]:
    return ["answer", "--model", str(checkpoint), "--video", str(video), "--question", "What is moving?",
            "--device", "cpu", "--max-new-tokens", "1", *extra]


@pytest.mark.parametrize("extra, flag", [(["--global-budget"], "--global-budget"),
                                         (["--method-option", "layer=3"], "--method-option layer")])
def test_method_settings_without_a_budget_are_refused_before_loading(capsys, tmp_path, synthetic_video, extra,
                                                                     flag) -> None:
    missing_model = tmp_path / "no-such-checkpoint"  # the check must come before the model is looked at
    code = main(answer(missing_model, synthetic_video, *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert flag in err and "--keep L or --reduction R" in err
    assert "Traceback" not in err and "no-such-checkpoint" not in err


def test_a_method_without_a_budget_says_it_prunes_nothing(capsys, tiny_checkpoint, synthetic_video) -> None:
    code = main(answer(tiny_checkpoint, synthetic_video, "--method", "fastv", "--json"))
    out = capsys.readouterr()
    assert code == 0
    assert json.loads(out.out)["visual_tokens"] == 8 * 64  # every patch of the tiny model's 8 frames
    assert "--method fastv without --keep or --reduction keeps every visual token" in out.err


def test_a_budget_or_no_method_gives_no_note(capsys, tiny_checkpoint, synthetic_video) -> None:
    for extra in ([], ["--method", "none"], ["--method", "fastv", "--reduction", "0.5"],
                  ["--method", "random", "--method-option", "keep=3"]):
        assert main(answer(tiny_checkpoint, synthetic_video, *extra)) == 0
        assert "note:" not in capsys.readouterr().err
