"""When a video's sampled frames were taken: what models with time-aware positions or prompts read.

Qwen2.5-VL spaces the temporal positions of a video's tokens by the seconds each temporal patch spans, and Qwen3-VL
writes each temporal patch's timestamp into the prompt; both take these from the video's frame numbers and frame
rate, as transformers' `VideoMetadata` holds them. Pixels given without a video carry no times: models then assume
`ASSUMED_FPS`, the rate Qwen's processors sample videos at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ASSUMED_FPS = 2.0
"""Frames per second assumed for pixels that come without their video (Qwen's processors sample at 2 fps)."""


@dataclass(frozen=True)
class FrameTimes:
    """The sampled frames of one video: their numbers in the source, its frame count and frame rate."""

    indices: list[int]
    total_frames: int
    fps: float

    @property
    def seconds(self) -> list[float]:
        """Each sampled frame's time in the source video."""
        return [index / self.fps for index in self.indices]

    @property
    def sampled_fps(self) -> float:
        """Sampled frames per second of video (transformers' `VideoMetadata.sampled_fps`)."""
        return len(self.indices) / self.total_frames * self.fps

    @classmethod
    def assumed(cls, frames: int) -> FrameTimes:
        """Times for `frames` frames that came without a video: consecutive, at `ASSUMED_FPS`."""
        return cls(list(range(frames)), frames, ASSUMED_FPS)


def frame_rate(path: str | os.PathLike) -> float | None:
    """The video's average frame rate from its container (None when it declares none)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except (av.FFmpegError, IndexError, OSError):
        return None
    return float(rate) if rate else None
