"""The README's Python examples are complete scripts: run them as written, in a fresh process and folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastervlm
from fastervlm.tiny.video import write_synthetic_video
from fastervlm.tiny.hf import write_tiny_hf_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_block(section: str) -> str:
    """The first ```python block under the README heading `section`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {section}")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no python block under '## {section}'"
    return block.group(1)


def run_readme_block(section: str, folder: Path) -> subprocess.CompletedProcess:
    script = folder / "example.py"
    script.write_text(readme_python_block(section), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_quick_start_is_at_the_top_and_runs_as_written(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The README's first lines after its title: load, prune, answer, in a folder where `ckpts/` holds the tiny
    random checkpoint in place of the real one (same names, same format) and `clip.mp4` a synthetic video."""
    from doc_blocks import sandbox

    text = README.read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", text, re.M)[0] == "Quick start"  # the first section
    code = readme_python_block("Quick start")
    assert len(code.strip().splitlines()) <= 5 and "method=\"fastervlm\", reduction=0.9" in code
    done = run_readme_block("Quick start", sandbox(tmp_path / "user", tiny_checkpoint))
    text, tokens = done.stdout.strip().rsplit(" ", 1)
    assert int(tokens) == 8 * round(64 * 0.1) and text  # 8 frames x 6 of the tiny model's 64 patches


def test_the_from_python_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                tiny_checkpoint: Path) -> None:
    monkeypatch.setenv("FASTERVLM_CACHE", str(tiny_checkpoint.parents[1]))  # the suite's copy of the tiny model
    done = run_readme_block("From Python", tmp_path)
    assert done.stdout.strip().splitlines()[-1] == str([8 * 16, 8 * 16])  # reduction 0.75 of the tiny 64 patches


def test_the_transformers_example_runs_as_written(tmp_path: Path) -> None:
    done = run_readme_block("Models loaded with transformers", tmp_path)
    tokens = int(re.search(r"^(\d+) visual tokens reached the LLM$", done.stdout, re.M).group(1))
    assert tokens < 8 * 36, "the pruned model must hand fewer than all of its visual tokens to the LLM"
    assert "deprecated" not in done.stderr


@torch.no_grad()
def test_processor_inputs_feed_the_stock_model_as_its_processor_would(tmp_path: Path) -> None:
    from transformers import VideoLlavaForConditionalGeneration

    checkpoint = write_tiny_hf_checkpoint(tmp_path / "ckpt", "video_llava")
    videos = [write_synthetic_video(tmp_path / f"{i}.mp4", seed=i) for i in range(2)]
    model = VideoLlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    inputs = fastervlm.processor_inputs(model, checkpoint, ["Why?", "What is moving there?"], videos=videos)
    pixels = inputs["pixel_values_videos"]
    assert pixels.shape[:2] == (2, 8)
    placeholders = (inputs["input_ids"] == model.config.video_token_id).sum(dim=1)
    assert placeholders.tolist() == [model.config.video_seq_length] * 2  # 8 x (patches + [CLS]), as the stock model
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][1].all()  # the shorter one left-padded
    stock = model(**inputs).logits[:, -1]
    with fastervlm.apply(model, method="none", keep_cls=True):  # every token, each frame's [CLS] included
        unpruned = model(**inputs).logits[:, -1]
    torch.testing.assert_close(unpruned, stock)


def test_processor_inputs_refuses_mismatched_media(tmp_path: Path) -> None:
    from transformers import VideoLlavaForConditionalGeneration

    checkpoint = write_tiny_hf_checkpoint(tmp_path / "ckpt", "video_llava")
    model = VideoLlavaForConditionalGeneration.from_pretrained(checkpoint)
    with pytest.raises(fastervlm.FasterVLMError, match="one video"):
        fastervlm.processor_inputs(model, checkpoint, ["a", "b"], videos=[tmp_path / "x.mp4"])
