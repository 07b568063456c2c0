"""Tiny Qwen-VL checkpoints (written once per session by hf_tiny) and what the tests feed them: clips of several
sizes, decoded as `Pipeline.frames` would, and the stock processor's inputs for them (fastervlm's torchvision-free
processor, which tests/test_qwen_processor.py holds to the stock one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hf_tiny import NEW_TOKENS, QWEN_FAMILIES, checkpoint, family_fixture, greedy, logits, model  # noqa: F401

from fastervlm.frame_times import FrameTimes
from fastervlm.models.base import adapter_for
from fastervlm.pipeline import Frames

SIZES = ((60, 90), (84, 84), (40, 100))
"""(height, width) of the test clips: the processor picks a different grid for each."""


def clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a random low-resolution pattern, upsampled so that neighbouring pixels agree."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, height // 6 + 1, width // 6 + 1, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def adapter(family: str, model: torch.nn.Module) -> Any:
    """The family's adapter around a stock model loaded by the test (tokenizer and processor files from disk)."""
    path = checkpoint(family, None)
    return adapter_for(path).around(model, path)


def decoded(adapter: Any, size: tuple[int, int], seed: int, frames: int = 16) -> Frames:
    """A clip as `Pipeline.frames` hands it over: preprocessed, with the times of a 3-second, 10 fps video."""
    pixels = adapter.preprocess(clip(frames, *size, seed))
    indices = np.linspace(0, 29, frames).round().astype(int).tolist()
    return Frames(pixels, indices, 0.0, FrameTimes(indices, 30, 10.0))


def video_inputs(adapter: Any, questions: list[str], sizes: tuple[tuple[int, int], ...] = SIZES[:2],
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """The stock processor's inputs for one clip per question (sizes cycled)."""
    videos = [decoded(adapter, sizes[i % len(sizes)], seed + i) for i in range(len(questions))]
    return adapter.processor_batch(questions, videos=videos)


def image_inputs(adapter: Any, questions: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """The stock processor's inputs for one image per question, of different sizes."""
    images = [clip(1, 56 + 28 * i, 84, seed + i)[0] for i in range(len(questions))]
    return adapter.processor_batch(questions, images=images)


family = family_fixture(QWEN_FAMILIES)
