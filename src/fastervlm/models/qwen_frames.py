"""Qwen-VL frames without torchvision: the video processor's resize and normalisation, and its patch layout.

The stock Qwen2.5-VL / Qwen3-VL video processors (transformers' `Qwen2VLVideoProcessor`, `Qwen3VLVideoProcessor`)
need torchvision. They pick each video's resolution with `smart_resize` (sides multiples of patch x merge, the
pixel count between the checkpoint's min and max: per frame for Qwen2.5-VL, over all frames for Qwen3-VL), resize
with torchvision's antialiased bicubic on uint8 (which is torch's own uint8 kernel), normalise in float32, and flatten every temporal patch (2 frames)
into rows of patches ordered merge block by merge block (`patchify`). The same steps are written here with torch
alone; tests hold them to the stock processor's own output. Not an adapter (nothing registers it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastervlm.errors import CheckpointError, MediaError
from fastervlm.models.checkpoint import positive_whole_number, read_json

VIDEO_PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
"""Where transformers reads a Qwen video processor's settings: its own file, else the image processor's."""
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
"""PIL resampling codes the video processors use, as torch interpolation modes."""


@dataclass(frozen=True)
class FrameSettings:
    """How one checkpoint's video processor prepares frames (its saved config over the processor class's defaults)."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resample: int = 3
    rescale_factor: float = 1 / 255
    max_video_tokens: int = 128000
    cap_pixels_per_frame: bool = False
    whole_video_budget: bool = False
    """Qwen3-VL: min/max pixels bound the whole clip (frames x height x width), not one frame."""

    @property
    def factor(self) -> int:
        """Sides are multiples of this: a merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def resized(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the stock processor resizes a clip of `frames` frames of height x width to."""
        if height <= 0 or width <= 0 or max(height, width) / min(height, width) > 200:
            raise MediaError(f"frames of {width} x {height} pixels cannot be resized for Qwen-VL (an aspect ratio "
                             "above 200, or an empty frame); crop the video.")
        if self.whole_video_budget:
            return _smart_resize_clip(frames, height, width, self)
        return _smart_resize(height, width, self.factor, self.min_pixels, self._frame_max_pixels(frames))

    def _frame_max_pixels(self, frames: int) -> int:
        """Qwen2.5-VL's per-frame cap, bounded by a share of the video budget when the config asks for it."""
        if not self.cap_pixels_per_frame:
            return self.max_pixels
        total = int(self.max_video_tokens * self.factor * self.factor * 0.9)
        return max(min(self.max_pixels, total * self.temporal_patch_size // frames), int(self.min_pixels * 1.05))


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's `smart_resize`: sides rounded to multiples of `factor`, the area brought within the bounds."""
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _smart_resize_clip(frames: int, height: int, width: int, settings: FrameSettings) -> tuple[int, int]:
    """Qwen3-VL's `smart_resize`: the bounds hold for frames x height x width (the per-frame cap when configured)."""
    factor, temporal = settings.factor, settings.temporal_patch_size
    max_pixels = settings.max_pixels
    if settings.cap_pixels_per_frame:
        per_frame = min(settings.max_video_tokens * factor * factor, settings.max_pixels // frames)
        max_pixels = max(per_frame, int(settings.min_pixels * 1.05)) * frames
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < settings.min_pixels:
        beta = math.sqrt(settings.min_pixels / (frames * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def read_frame_settings(path: Path, defaults: FrameSettings) -> FrameSettings:
    """The checkpoint's video processor settings, as transformers loads them: the first of
    `VIDEO_PROCESSOR_FILES` present, its `size` (shortest_edge/longest_edge = min/max pixels) or the older
    min_pixels/max_pixels keys over the class defaults."""
    for name in VIDEO_PROCESSOR_FILES:
        file = path / name
        if not file.is_file():
            continue
        # null means unset, as transformers' video processors read it: the class default applies
        saved = {key: value for key, value in read_json(file, fix="re-download the checkpoint").items()
                 if value is not None}
        size = saved.get("size") or {}
        if not isinstance(size, dict):
            raise CheckpointError(f"{file} has size = {json.dumps(size)}, not an object with shortest_edge and "
                                  "longest_edge: re-download the checkpoint.")
        changes = {key: saved[key] for key in ("patch_size", "temporal_patch_size", "merge_size", "resample",
                                               "rescale_factor", "max_video_tokens") if key in saved}
        changes.update({key: tuple(saved[key]) for key in ("image_mean", "image_std") if key in saved})
        changes["cap_pixels_per_frame"] = bool(saved.get("cap_pixels_per_frame"))
        min_pixels = saved.get("min_pixels", size.get("shortest_edge", defaults.min_pixels))
        max_pixels = saved.get("max_pixels", size.get("longest_edge", defaults.max_pixels))
        _check_sizes(file, {**changes, "min_pixels": min_pixels, "max_pixels": max_pixels})
        settings = replace(defaults, min_pixels=min_pixels, max_pixels=max_pixels, **changes)
        if settings.resample not in _RESAMPLE:
            raise CheckpointError(f"{file} asks for resample {settings.resample}; fastervlm resizes Qwen-VL frames "
                                  "with bicubic (3) or bilinear (2) interpolation only.")
        return settings
    raise CheckpointError(f"{path} has none of {', '.join(VIDEO_PROCESSOR_FILES)}: copy the checkpoint's "
                          "preprocessor files.")


def _check_sizes(file: Path, values: dict[str, Any]) -> None:
    """The sizes a video processor file gives must be positive whole numbers (a number as text would fail deep in
    the resize, or be used silently)."""
    for key in ("patch_size", "temporal_patch_size", "merge_size", "max_video_tokens", "min_pixels", "max_pixels"):
        value = values.get(key)
        if key in values and not positive_whole_number(value):
            raise CheckpointError(f"{file} has {key} = {json.dumps(value)}, not a positive whole number: "
                                  "re-download the checkpoint.")
    if values["min_pixels"] > values["max_pixels"]:
        raise CheckpointError(f"{file} has min_pixels {values['min_pixels']} above max_pixels {values['max_pixels']}: "
                              "re-download the checkpoint.")


def prepare_frames(frames: np.ndarray, settings: FrameSettings) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H', W'): resized as torchvision does (antialiased, torch's uint8
    kernel), then rescaled and normalised in one step (mean and std scaled by 1 / rescale_factor)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    height, width = settings.resized(video.shape[0], video.shape[2], video.shape[3])
    if (height, width) != tuple(video.shape[2:]):
        video = F.interpolate(video, size=(height, width), mode=_RESAMPLE[settings.resample], align_corners=False,
                              antialias=True)  # on uint8, as torchvision resizes (torch's own uint8 kernel)
    mean = torch.tensor(settings.image_mean) * (1.0 / settings.rescale_factor)
    std = torch.tensor(settings.image_std) * (1.0 / settings.rescale_factor)
    return video.to(torch.float32).sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def even_frames(pixels: torch.Tensor, temporal: int) -> torch.Tensor:
    """(T, 3, H, W) padded with copies of the last frame to a multiple of `temporal` (as the processor pads)."""
    missing = -pixels.shape[0] % temporal
    return torch.cat([pixels, pixels[-1:].expand(missing, -1, -1, -1)]) if missing else pixels


def patchify(pixels: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, 3, H, W) -> (grid_t x grid_h x grid_w, 3 x temporal x patch x patch) rows in the processor's order
    (temporal patch, merge-block row, merge-block column, row and column inside the block), and the grid."""
    pixels = even_frames(pixels, temporal)
    frames, channels, height, width = pixels.shape
    grid = (frames // temporal, height // patch, width // patch)
    blocks = pixels.reshape(grid[0], temporal, channels, grid[1] // merge, merge, patch, grid[2] // merge, merge, patch)
    rows = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return rows.reshape(grid[0] * grid[1] * grid[2], channels * temporal * patch * patch), grid


def unpatchify(rows: torch.Tensor, grid: tuple[int, int, int], patch: int, temporal: int, merge: int) -> torch.Tensor:
    """The inverse of `patchify`: processor rows of one item and its (t, h, w) grid -> (t x temporal, 3, H, W)."""
    grid_t, grid_h, grid_w = grid
    channels = rows.shape[1] // (temporal * patch * patch)
    blocks = rows.reshape(grid_t, grid_h // merge, grid_w // merge, merge, merge, channels, temporal, patch, patch)
    frames = blocks.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
    return frames.reshape(grid_t * temporal, channels, grid_h * patch, grid_w * patch)
