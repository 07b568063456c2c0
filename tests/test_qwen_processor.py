"""Qwen-VL inputs without torchvision equal the stock processors' (`Qwen2_5_VLProcessor`, `Qwen3VLProcessor`, whose
video processors need torchvision): held to outputs the stock processors wrote (tests/golden, made by
make_qwen_processor_golden.py in an environment with torchvision) and, where torchvision imports, to the stock
processor run here."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_tiny import QWEN_FAMILIES, checkpoint, one_thread  # noqa: F401  (autouse)

import fastervlm
from fastervlm.errors import CheckpointError
from fastervlm.frame_times import FrameTimes
from fastervlm.models.qwen_frames import patchify, prepare_frames, read_frame_settings, unpatchify
from fastervlm.pipeline import Frames

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_qwen_processor_golden import METADATA, TIGHT, clip  # noqa: E402

TIMES = FrameTimes(METADATA["frames_indices"], METADATA["total_num_frames"], METADATA["fps"])


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return fastervlm.load(checkpoint(request.param, tmp_path_factory), device="cpu")


def _ours(pipeline) -> dict[str, torch.Tensor]:
    frames = Frames(pipeline.adapter.preprocess(clip()), TIMES.indices, 0.0, TIMES)
    return pipeline.adapter.processor_batch(["What is it?"], videos=[frames])


def _tight(pipeline, family: str):
    settings = pipeline.adapter.frame_settings
    size = TIGHT[family]["size"]
    return replace(settings, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"], cap_pixels_per_frame=True)


def test_frames_and_prompt_equal_the_stock_processors_golden_output(pipeline) -> None:
    family = pipeline.adapter.model_types[0]
    golden = np.load(GOLDEN / "qwen_processor_golden.npz")
    assert np.array_equal(golden["frames"], clip())
    ours = _ours(pipeline)
    keys = {key.split("/", 1)[1] for key in golden.files if key.startswith(f"{family}/") and "/tight/" not in key}
    assert set(ours) == keys
    for key in keys:
        torch.testing.assert_close(ours[key], torch.from_numpy(golden[f"{family}/{key}"]).to(ours[key].dtype),
                                   atol=1e-6, rtol=0, msg=key)
    settings = _tight(pipeline, family)
    rows, grid = patchify(prepare_frames(clip(), settings), settings.patch_size, settings.temporal_patch_size,
                          settings.merge_size)
    assert list(grid) == golden[f"{family}/tight/video_grid_thw"][0].tolist()
    torch.testing.assert_close(rows, torch.from_numpy(golden[f"{family}/tight/pixel_values_videos"]), atol=1e-6, rtol=0)


def test_equal_to_the_stock_processor_where_torchvision_imports(pipeline) -> None:
    pytest.importorskip("torchvision", reason="the stock Qwen video processors need torchvision")
    from transformers import AutoProcessor, AutoVideoProcessor

    family, path = pipeline.adapter.model_types[0], pipeline.path
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    stock = processor(text=[text], videos=[clip()], video_metadata=[METADATA], do_sample_frames=False,
                      return_tensors="pt")
    ours = _ours(pipeline)
    for key in ours:
        torch.testing.assert_close(ours[key], stock[key].to(ours[key].dtype), atol=1e-6, rtol=0, msg=key)
    tight = AutoVideoProcessor.from_pretrained(path, **TIGHT[family])(videos=[clip()], video_metadata=[METADATA],
                                                                      do_sample_frames=False, return_tensors="pt")
    settings = _tight(pipeline, family)
    rows, _ = patchify(prepare_frames(clip(), settings), settings.patch_size, 2, 2)
    torch.testing.assert_close(rows, tight["pixel_values_videos"], atol=1e-6, rtol=0)


def test_processor_inputs_from_a_video_file_carry_its_times(pipeline, synthetic_video: Path) -> None:
    adapter = pipeline.adapter
    inputs = fastervlm.processor_inputs(adapter.model, pipeline.path, ["What is it?", "Why?"],
                                        videos=[synthetic_video, synthetic_video])
    frames = pipeline.frames(video=synthetic_video)
    assert frames.times is not None and frames.times.fps == 8.0  # the synthetic video's rate
    grid = inputs["video_grid_thw"]
    assert grid[:, 0].tolist() == [8, 8]
    video = inputs["mm_token_type_ids"] == 2
    assert video.sum(1).tolist() == [int(grid[0].prod()) // 4] * 2
    assert torch.equal(video, inputs["input_ids"] == adapter.model.config.video_token_id)
    text = adapter.tokenizer.decode(inputs["input_ids"][0])
    if "second_per_grid_ts" in inputs:  # Qwen2.5-VL: seconds per temporal patch
        assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / frames.times.sampled_fps] * 2)
    else:  # Qwen3-VL: each temporal patch's time in the prompt
        seconds = frames.times.seconds
        assert f"<{(seconds[0] + seconds[1]) / 2:.1f} seconds>" in text and text.count(" seconds>") == 8
    rows = inputs["pixel_values_videos"][: int(grid[0].prod())]
    settings = adapter.frame_settings
    back = unpatchify(rows, tuple(grid[0].tolist()), settings.patch_size, 2, 2)
    torch.testing.assert_close(back, frames.pixels)  # the processor's patch order, undone


def test_images_are_the_image_processors_own(pipeline, tmp_path: Path) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor

    image = clip()[0]
    Image.fromarray(image).save(tmp_path / "x.png")
    inputs = fastervlm.processor_inputs(pipeline.adapter.model, pipeline.path, ["What is it?"],
                                        images=[tmp_path / "x.png"])
    stock = AutoImageProcessor.from_pretrained(pipeline.path, backend="pil")(images=[image], return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], stock["pixel_values"])
    assert torch.equal(inputs["image_grid_thw"], stock["image_grid_thw"])
    assert int((inputs["mm_token_type_ids"] == 1).sum()) == int(stock["image_grid_thw"].prod()) // 4


def test_settings_are_read_as_transformers_reads_them(pipeline, tmp_path: Path) -> None:
    defaults = type(pipeline.adapter).frame_defaults
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 100, "max_pixels": 5000}))
    settings = read_frame_settings(tmp_path, defaults)
    assert (settings.min_pixels, settings.max_pixels, settings.patch_size) == (100, 5000, defaults.patch_size)
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 7,
                                                                                  "longest_edge": 9}}))
    assert (read_frame_settings(tmp_path, defaults).min_pixels, read_frame_settings(tmp_path, defaults).max_pixels) == (7, 9)
    with pytest.raises(CheckpointError, match="none of video_preprocessor_config.json"):
        read_frame_settings(tmp_path / "missing", defaults)


def test_an_odd_frame_count_is_padded_with_the_last_frame(pipeline) -> None:
    settings = pipeline.adapter.frame_settings
    pixels = pipeline.adapter.preprocess(clip()[:3])
    rows, grid = patchify(pixels, settings.patch_size, 2, 2)
    back = unpatchify(rows, grid, settings.patch_size, 2, 2)
    assert grid[0] == 2 and torch.equal(back[:3], pixels) and torch.equal(back[3], pixels[2])
