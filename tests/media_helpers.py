"""Helpers shared by the media tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def decode_all(path: Path) -> list[np.ndarray]:
    """The naive reference: every frame PyAV decodes (until an error), in order, as rgb24 as stored (not turned)."""
    frames = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError:
            pass
    return frames
