"""`fastervlm answer` and `fastervlm demo` end to end, in-process, and their errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastervlm.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def answer_args(checkpoint: Path, video: Path, *extra: str) -> list[str]:
    return ["answer", "--model", str(checkpoint), "--video", str(video), "--question", "What is moving?",
            "--device", "cpu", "--max-new-tokens", "5", *extra]


def test_answer_json_on_a_synthetic_video(capsys, tiny_checkpoint, synthetic_video) -> None:
    code, out, _ = run_cli(capsys, *answer_args(tiny_checkpoint, synthetic_video, "--reduction", "0.9", "--json"))
    assert code == 0
    result = json.loads(out)
    keep = round(64 * 0.1)  # the tiny model has 8x8 patches per frame
    assert result["visual_tokens"] == 8 * keep
    assert [len(frame) for frame in result["kept_indices"]] == [keep] * 8
    assert 1 <= len(result["output_ids"]) <= 5 and isinstance(result["answer"], str)
    assert result["prompt_tokens"] > result["visual_tokens"]
    assert result["frame_indices"] == [0, 3, 6, 9, 13, 16, 19, 23]  # floor(linspace(0, 23, 8))
    for stage in ("decode_video", "vision_encoder", "cls_scoring", "selection", "projector", "llm_prefill"):
        assert result["timings"][stage] >= 0
    assert result["method"] == {"method": "fastervlm", "keep": None, "reduction": 0.9, "global_budget": False}


def test_answer_text_output_and_keep_flag(capsys, tiny_checkpoint, synthetic_video) -> None:
    code, out, err = run_cli(capsys, *answer_args(tiny_checkpoint, synthetic_video, "--keep", "3"))
    assert code == 0 and out.endswith("\n")
    assert "visual tokens 24" in err


def test_demo_runs_on_the_embedded_tiny_model(capsys, tiny_root) -> None:
    code, out, _ = run_cli(capsys, "demo", "--cache-dir", str(tiny_root), "--max-new-tokens", "4", "--json")
    assert code == 0
    results = json.loads(out)
    assert results["none"]["visual_tokens"] == 512
    assert results["fastervlm r=0.9"]["visual_tokens"] == 48


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep", "65"], "--keep must be a whole number of patches per frame between 0 and 64"),
        (["--keep", "-1"], "--keep must be a whole number of patches per frame, 0 or more (got -1)"),
        (["--reduction", "1.5"], "--reduction must be between 0 and 1"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "fastervlm", "--method-option", "bogus=1"], "has no setting bogus"),
        (["--method-option", "nonsense"], "is not KEY=VALUE"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--device", "cuda:0"], "asks for a GPU but torch sees none"),
    ],
)
def test_bad_settings_get_a_clear_error(capsys, tiny_checkpoint, synthetic_video, extra, message) -> None:
    if "cuda:0" in extra:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    code, out, err = run_cli(capsys, *answer_args(tiny_checkpoint, synthetic_video, *extra))
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_keep_and_reduction_are_exclusive(capsys, tiny_checkpoint, synthetic_video) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(answer_args(tiny_checkpoint, synthetic_video, "--keep", "3", "--reduction", "0.5"))
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "missing.mp4"),
        (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "notes.mp4"),
        (lambda d: d, "is a directory"),
    ],
)
def test_bad_video_files_get_a_clear_error(capsys, tmp_path, tiny_checkpoint, make, message) -> None:
    video = make(tmp_path)
    code, _, err = run_cli(capsys, *answer_args(tiny_checkpoint, video))
    assert code == 2 and "Traceback" not in err
    assert message in err


def test_image_for_a_video_model(capsys, tiny_checkpoint, tmp_path) -> None:
    image = tmp_path / "frame.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32)).save(image)
    code, _, err = run_cli(capsys, "answer", "--model", str(tiny_checkpoint), "--image", str(image),
                           "--question", "What?", "--device", "cpu")
    assert code == 2 and "pass --video, not --image" in err


def test_missing_checkpoint_folder(capsys, tmp_path, synthetic_video) -> None:
    code, _, err = run_cli(capsys, *answer_args(tmp_path / "nowhere", synthetic_video))
    assert code == 2 and "does not exist" in err


def test_an_option_of_another_family_is_refused(capsys, tiny_checkpoint, synthetic_video) -> None:
    code, _, err = run_cli(capsys, *answer_args(tiny_checkpoint, synthetic_video, "--keep-cls"))
    assert code == 2 and "--keep-cls does not apply to video-llava checkpoints" in err
