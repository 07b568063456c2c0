"""HoliTom on the tiny checkpoints: `fastervlm answer` on a clip whose first frames are identical gives them fewer
tokens than the changing ones, within the budget; the merges an answer reports are the selection's, each merged
token sitting in the first frame it holds; `fastervlm.apply` on the transformers families (the [CLS] tokens of
Video-LLaVA-hf projected too); `fastervlm show` draws it."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hf_tiny import checkpoint, processor_inputs, stock_model
from test_hf_models import CANDIDATES, logits, placeholder_id

import fastervlm
from fastervlm import engine
from fastervlm.cli import main
from fastervlm.models.base import GenerationSettings

REPEATED, CHANGING = 4, 4


def repeating_video(path: Path, size: int = 64, seed: int = 0) -> Path:
    """An H.264 clip of REPEATED identical random frames, then CHANGING fresh random ones (8 frames: the tiny model
    samples every one)."""
    rng = np.random.default_rng(seed)
    still = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(REPEATED + CHANGING):
            image = still if i < REPEATED else rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def check_groups(tokens_per_frame: list[int], merge_groups: list[list[int]]) -> None:
    """Every merged token holds candidates of several patches or frames and sits in the first frame it holds."""
    frame_of = [frame for frame, count in enumerate(tokens_per_frame) for _ in range(count)]
    held: dict[int, list[int]] = {}
    for frame, row in enumerate(merge_groups):
        for token in row:
            if token >= 0:
                held.setdefault(token, []).append(frame)
    assert held and all(len(frames) >= 2 and frame_of[token] == min(frames) for token, frames in held.items())


def test_answer_gives_the_repeated_frames_fewer_tokens(tmp_path, capsys, tiny_checkpoint) -> None:
    video = repeating_video(tmp_path / "repeats.mp4")
    code = main(["answer", "--model", str(tiny_checkpoint), "--video", str(video), "--question", "What changes?",
                 "--device", "cpu", "--max-new-tokens", "3", "--method", "holitom", "--reduction", "0.75", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    per_frame = result["tokens_per_frame"]
    assert result["frame_indices"] == list(range(REPEATED + CHANGING))
    assert per_frame[1:REPEATED] == [0] * (REPEATED - 1)  # the repeats went into their first occurrence
    assert sum(per_frame[:REPEATED]) < sum(per_frame[REPEATED:])
    assert sum(per_frame) == result["visual_tokens"] <= 8 * 16  # 8 frames x L = 16 of 64 patches
    assert result["method"]["method"] == "holitom"
    check_groups(per_frame, result["merge_groups"])
    frame_zero = [token for token in set(result["merge_groups"][0]) if 0 <= token < per_frame[0]]
    assert frame_zero and all(token in result["merge_groups"][frame] for token in frame_zero
                              for frame in range(REPEATED))  # frame 0's tokens hold all the repeats


def test_the_answers_merge_groups_are_the_selections(tiny_pipeline) -> None:
    size = tiny_pipeline.adapter.tower.config.image_size
    generator = torch.Generator().manual_seed(5)
    pixels = torch.randn(8, 3, size, size, generator=generator)
    pixels[1:REPEATED] = pixels[0]
    pruner = tiny_pipeline.pruner("holitom", keep=6)
    answer = tiny_pipeline.answer("What changes?", pixels=pixels, method=pruner,
                                  generation=GenerationSettings(max_new_tokens=2))
    with torch.inference_mode():
        (tokens,) = engine.encode(tiny_pipeline.adapter.stream, [pixels], pruner.required_inputs())
    selection = pruner.select(tokens)
    assert answer.merge_groups == selection.groups.view(8, -1).tolist()
    assert answer.tokens_per_frame == selection.tokens_per_frame and answer.visual_tokens == 8 * 6
    assert answer.kept_indices == [index.tolist() for index in selection.kept_indices]
    check_groups(answer.tokens_per_frame, answer.merge_groups)


@pytest.mark.parametrize("family", ["video_llava", "llava_onevision"])
def test_apply_on_the_transformers_families(family: str, tmp_path_factory) -> None:
    checkpoint(family, tmp_path_factory)
    model = stock_model(family, tmp_path_factory)
    inputs = processor_inputs(family, ["What is it?", "What is the man doing in the video?"])
    trailing = 1 if family == "llava_onevision" else 0  # OneVision's newline closes each video
    with fastervlm.apply(model, "holitom", keep=3) as pruning:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    placeholders = (pruning.input_ids == placeholder_id(model, family)).sum(1).tolist()
    assert placeholders == [record.visual_tokens + trailing for record in pruning.records]
    assert all(record.visual_tokens <= 8 * 3 for record in pruning.records)
    stock = logits(model, inputs)
    keep_cls = {"keep_cls": True} if family == "video_llava" else {}  # each frame's [CLS] projected and fed too
    with fastervlm.apply(model, "holitom", keep=CANDIDATES[family], **keep_cls):
        torch.testing.assert_close(logits(model, inputs), stock, atol=1e-5, rtol=1e-5)


def test_show_draws_it(tmp_path, tiny_checkpoint) -> None:
    video, out = repeating_video(tmp_path / "repeats.mp4"), tmp_path / "holitom.png"
    assert main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(video), "--out",
                 str(out), "--scale", "1", "--method", "holitom", "--reduction", "0.75"]) == 0
    assert out.stat().st_size > 0
