"""Everything that can be checked without a model is checked before one loads (issue 14.10): a bad budget,
method, setting, decoding flag or --device fails in `answer`, `show` and `web` without the checkpoint being looked
at (a missing checkpoint folder would be the error otherwise)."""

from __future__ import annotations

import importlib.util

import pytest

from fastervlm.cli import main

BAD_FLAGS = [
    (["--keep", "-1"], "--keep must be a whole number of patches per frame, 0 or more (got -1)"),
    (["--reduction", "1.5"], "--reduction must be between 0 and 1"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "fastervlm", "--reduction", "0.5", "--method-option", "bogus=1"], "has no setting bogus"),
    (["--method", "fastv", "--reduction", "0.5", "--method-option", "layer=0"], "--method-option layer K must be"),
    (["--method", "none", "--reduction", "0.5"], "keeps every token: drop --keep/--reduction"),
    (["--reduction", "0.5", "--method-option", "fastv:layer=3"], "scoped to fastv"),
    (["--method-option", "nonsense"], "is not KEY=VALUE"),
    (["--reduction", "0.5", "--device", "tpu"], "is not a device name"),
]


def _no_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")


@pytest.mark.parametrize("extra, message", [*BAD_FLAGS, (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
                                            (["--device", "cuda:0"], "asks for a GPU but torch sees none")])
def test_answer_checks_before_loading(capsys, tmp_path, synthetic_video, extra, message) -> None:
    if "cuda:0" in extra:
        _no_gpu()
    code = main(["answer", "--model", str(tmp_path / "no-such-checkpoint"), "--video", str(synthetic_video),
                 "--question", "What?", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "no-such-checkpoint" not in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [*BAD_FLAGS, (["--method", "fastv", "--reduction", "0.5"], "inside the LLM")])
def test_show_checks_before_loading(capsys, tmp_path, synthetic_video, extra, message) -> None:
    code = main(["show", "--model", str(tmp_path / "no-such-checkpoint"), "--video", str(synthetic_video),
                 "--out", str(tmp_path / "kept.png"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "no-such-checkpoint" not in err and not (tmp_path / "kept.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs the [web] extra (gradio)")
@pytest.mark.parametrize("extra, message", [(["--device", "tpu"], "is not a device name"),
                                            (["--max-question-chars", "0"], "--max-question-chars")])
def test_web_checks_before_loading(capsys, tmp_path, extra, message) -> None:
    code = main(["web", "--model", str(tmp_path / "no-such-checkpoint"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "loading" not in err and "no-such-checkpoint" not in err


def test_check_before_loading_resolves_the_method_through_the_registry() -> None:
    import argparse

    from fastervlm.cli.common import add_generation_arguments, add_method_arguments, check_before_loading
    from fastervlm.methods import baseline_method, default_method

    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    add_generation_arguments(parser)
    assert check_before_loading(parser.parse_args([])).method == baseline_method()
    request = check_before_loading(parser.parse_args(["--keep", "3", "--max-new-tokens", "7"]))
    assert (request.method, request.settings, request.generation.max_new_tokens) == (default_method(True), {"keep": 3}, 7)
