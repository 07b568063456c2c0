"""Everything that can be checked without a model is checked before one loads (issue 14.10, issue 22): a bad
budget, method, setting, decoding flag, --device or file (a missing --video included) fails in every command that
runs a model (`answer`, `show`, `web`, `eval predict`, `eval sweep`, `bench` and `bench --eval`) without the
checkpoint being looked at: the checkpoint folder given does not exist, and that would be the error otherwise."""

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


DECODING = [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--sample", "--temperature", "0"], "temperature (--temperature) must be a finite number above 0"),
    (["--device", "cuda:0"], "asks for a GPU but torch sees none"),
]
FILES = [
    (["--video-tower", "{tmp}/no-tower"], "--video-tower {tmp}/no-tower is not a folder"),
]
"""Checks of the files the flags name; {tmp} is the test's folder."""


def _refused_before_loading(capsys, tmp_path, argv: list[str], message: str) -> str:
    """Run `argv` (with {tmp}, {video}, {model} filled in): exit status 2 with `message`, and no sign that the model
    (the missing folder {model}) was looked at. Returns stderr."""
    if "cuda:0" in argv:
        _no_gpu()
    fill = {"tmp": tmp_path, "model": tmp_path / "no-such-checkpoint"}
    code = main([part.format(**fill) for part in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.format(**fill) in err
    assert "no-such-checkpoint" not in err and "Traceback" not in err and "web: loading" not in err
    return err


ANSWER = ["answer", "--model", "{model}", "--question", "What?"]


@pytest.mark.parametrize("extra, message", [*BAD_FLAGS, *DECODING, *FILES])
def test_answer_checks_before_loading(capsys, tmp_path, synthetic_video, extra, message) -> None:
    _refused_before_loading(capsys, tmp_path, [*ANSWER, "--video", str(synthetic_video), *extra], message)


@pytest.mark.parametrize("media, message", [
    (["--video", "{tmp}/missing.mp4"], "video file not found: {tmp}/missing.mp4"),
    (["--image", "{tmp}/missing.png"], "image file not found: {tmp}/missing.png"),
    (["--video", "{tmp}"], "is a directory, not a video file"),
])
def test_answer_checks_the_media_file_before_loading(capsys, tmp_path, media, message) -> None:
    _refused_before_loading(capsys, tmp_path, [*ANSWER, *media], message)


def test_answer_refuses_an_empty_question_before_loading(capsys, tmp_path, synthetic_video) -> None:
    _refused_before_loading(capsys, tmp_path, ["answer", "--model", "{model}", "--video", str(synthetic_video),
                                               "--question", "  "], "--question is empty")


SHOW_FLAGS = [
    (["--method", "fastv", "--reduction", "0.5"], "inside the LLM"),
    (["--columns", "0"], "--columns and --scale must be at least 1"),
    (["--scale", "0"], "--columns and --scale must be at least 1"),
    (["--fps", "0"], "--fps is the animation's frames per second: above 0"),
    (["--out", "{tmp}/no-folder/kept.png"], "the folder {tmp}/no-folder does not exist"),
    (["--out", "{tmp}/kept.xyz"], "Pillow cannot write .xyz"),
    (["--animation", "{tmp}/no-folder/kept.gif"], "the folder {tmp}/no-folder does not exist"),
    (["--question", ""], "--question is empty"),
    (["--video", "{tmp}/missing.mp4"], "video file not found"),
]


@pytest.mark.parametrize("extra, message", [*BAD_FLAGS, *FILES, *SHOW_FLAGS])
def test_show_checks_before_loading(capsys, tmp_path, synthetic_video, extra, message) -> None:
    _refused_before_loading(capsys, tmp_path, ["show", "--model", "{model}", "--video", str(synthetic_video),
                                               "--out", "{tmp}/kept.png", *extra], message)
    assert not (tmp_path / "kept.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs the [web] extra (gradio)")
@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "is not a device name"),
    (["--max-question-chars", "0"], "--max-question-chars"),
    (["--max-upload-mb", "0"], "--max-upload-mb, --max-video-seconds and --max-question-chars must be above 0"),
    (["--max-video-seconds", "0"], "--max-upload-mb, --max-video-seconds and --max-question-chars must be above 0"),
    (["--port", "0"], "--port 0 is not a port number"),
    (["--runs", "{tmp}/no-runs"], "--runs {tmp}/no-runs is not a folder"),
    *DECODING, *FILES,
])
def test_web_checks_before_loading(capsys, tmp_path, extra, message) -> None:
    _refused_before_loading(capsys, tmp_path, ["web", "--model", "{model}", *extra], message)


@pytest.fixture
def data_root(tmp_path):
    """The four built-in benchmarks' question files (no videos: nothing gets that far)."""
    from eval_helpers import write_sample_benchmarks

    write_sample_benchmarks(tmp_path / "data")
    return tmp_path / "data"


def _file(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")


PREDICT_FLAGS = [
    (["--prefetch", "-1"], "--prefetch is a number of videos decoded ahead: 0 or more (got -1)"),
    (["--benchmarks", "tgif", "--run-dir", "{tmp}/run"], "--run-dir names one run"),
    (["--benchmarks", "nope"], "nope"),
    (["--batch-size", "0"], "--batch-size is a number of questions per generate call: 1 or more (got 0)"),
    (["--frame-cache-size", "-1"], "--frame-cache-size is a size in GiB: 0 or more (got -1)"),
    (["--out", "{tmp}/a-file/runs"], "is a file, not a folder"),
]


@pytest.mark.parametrize("extra, message", [*BAD_FLAGS, *DECODING, *FILES, *PREDICT_FLAGS])
def test_eval_predict_checks_before_loading(capsys, tmp_path, data_root, extra, message) -> None:
    _file(tmp_path)
    out = [] if "--run-dir" in extra else ["--out", "{tmp}/runs"]
    _refused_before_loading(capsys, tmp_path, ["eval", "predict", "--benchmarks", "msvd", "--data-root", str(data_root),
                                               "--model", "{model}", *out, *extra], message)
    assert not (tmp_path / "runs").exists()


def test_eval_predict_checks_the_data_before_loading(capsys, tmp_path) -> None:
    _refused_before_loading(capsys, tmp_path, ["eval", "predict", "--benchmarks", "msvd", "--data-root",
                                               "{tmp}/no-data", "--model", "{model}", "--out", "{tmp}/runs"],
                            "no question/answer files for MSVD-QA in {tmp}/no-data")


SWEEP_FLAGS = [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--reductions", "1.5"], "--reductions must be between 0 and 1"),
    (["--reductions", "x"], "--reductions: 'x' is not a list of float values"),
    (["--methods", "fastervlm", "--method-option", "fastv:layer=3"], "which is not in --methods"),
    (["--method-option", "bogus=1"], "has no setting bogus"),
    (["--benchmarks", "nope"], "nope"),
    (["--batch-size", "0"], "--batch-size is a number of questions per generate call"),
    (["--out", "{tmp}/a-file/runs"], "is a file, not a folder"),
    (["--device", "tpu"], "is not a device name"),
]


@pytest.mark.parametrize("extra, message", [*DECODING, *FILES, *SWEEP_FLAGS])
def test_eval_sweep_checks_before_loading(capsys, tmp_path, data_root, monkeypatch, extra, message) -> None:
    _file(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "not-used")
    out = [] if "--out" in extra else ["--out", "{tmp}/runs"]
    _refused_before_loading(capsys, tmp_path, ["eval", "sweep", "--data-root", str(data_root), "--model", "{model}",
                                               *out, *extra], message)


def test_eval_sweep_checks_the_judge_key_before_loading(capsys, tmp_path, data_root, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _refused_before_loading(capsys, tmp_path, ["eval", "sweep", "--data-root", str(data_root), "--model", "{model}",
                                               "--out", "{tmp}/runs"], "OPENAI_API_KEY")


BENCH_FLAGS = [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--reductions", "1.5"], "--reductions must be between 0 and 1"),
    (["--keeps", "-1"], "--keeps must be a whole number of patches per frame, 0 or more (got -1)"),
    (["--method-option", "bogus=1"], "has a setting bogus"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--device", "tpu"], "is not a device name"),
    (["--video-tower", "{tmp}/no-tower"], "--video-tower {tmp}/no-tower is not a folder"),
]


@pytest.mark.parametrize("extra, message", [
    *BENCH_FLAGS,
    (["--repeats", "0"], "--repeats and --max-new-tokens must be at least 1, --warmup at least 0"),
    (["--warmup", "-1"], "--repeats and --max-new-tokens must be at least 1, --warmup at least 0"),
    (["--video", "{tmp}/missing.mp4"], "video file not found: {tmp}/missing.mp4"),
    (["--question", " "], "--question is empty"),
    (["--videos", "2"], "--videos applies to --eval only"),
])
def test_bench_checks_before_loading(capsys, tmp_path, extra, message) -> None:
    _refused_before_loading(capsys, tmp_path, ["bench", "--model", "{model}", "--in-process", "--out", "{tmp}/out",
                                               *extra], message)


@pytest.mark.parametrize("extra, message", [
    *BENCH_FLAGS,
    (["--videos", "0"], "--videos and --questions must be at least 1"),
    (["--size", "7x7"], "width and height must be even and at least 16"),
    (["--size", "wide"], "--size 'wide': give WIDTHxHEIGHT"),
    (["--duration", "0.1"], "gives 3 frames; the model samples 8"),
    (["--video", "{tmp}/clip.mp4"], "--video applies to the methods x budgets mode"),
])
def test_bench_eval_checks_before_loading(capsys, tmp_path, extra, message) -> None:
    _refused_before_loading(capsys, tmp_path, ["bench", "--eval", "--model", "{model}", "--out", "{tmp}/out", *extra],
                            message)


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
