"""Small deterministic synthetic videos for tests, the demo and the web page's sample (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np


def write_synthetic_video(
    path: str | os.PathLike,
    *,
    num_frames: int = 24,
    height: int = 96,
    width: int = 128,
    fps: int = 8,
    seed: int = 0,
    faststart: bool = True,
) -> Path:
    """A small deterministic H.264 MP4: a colour gradient, a bright square moving right and a disc moving down.

    Frames differ from each other and patches within a frame differ, which tests, the demo and the web sample
    need. `faststart` (MP4/MOV) puts the index first so browsers can play it while loading.
    """
    if height % 2 or width % 2 or height < 16 or width < 16:
        raise ValueError(f"yuv420p needs even dimensions of at least 16, got {height}x{width}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    corner_a, corner_b, disc_colour = rng.integers(0, 160, size=(3, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = ((xx / width + yy / height) / 2)[..., None]
    background = (corner_a * (1 - ramp) + corner_b * ramp).astype(np.uint8)
    side, radius = height // 4, height // 6
    options = {"movflags": "faststart"} if faststart and path.suffix.lower() in (".mp4", ".mov") else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            image = background.copy()
            x0 = (i * 5) % (width - side)
            image[height // 8 : height // 8 + side, x0 : x0 + side] = 255
            cy, cx = radius + (i * 3) % (height - 2 * radius), width - 2 * radius
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = disc_colour + 90
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
