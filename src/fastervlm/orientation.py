"""The display transform a video container declares (a phone's quarter turn, a mirror), read from FFmpeg's display
matrix and applied to decoded frames, so that every decoder path sees the picture upright as a viewer shows it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np


class Orientation(NamedTuple):
    """A right-angle display transform (the 8 EXIF-like orientations): transpose first, then the flips."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False


UPRIGHT = Orientation()


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """(a, b, c, d) of the display matrix FFmpeg attaches to the frame: a source pixel (x, y) shows at
    (a*x + c*y, b*x + d*y) (libavutil/display.h; the translation only moves the picture back into view)."""
    side = frame.side_data.get("DISPLAYMATRIX")
    return None if side is None else np.frombuffer(bytes(side), dtype=np.int32)[[0, 1, 3, 4]] / 65536.0


def orientation_of(frame: av.VideoFrame, path: Path) -> Orientation:
    """The frame's display matrix (a phone's quarter turn) as a right-angle transform; a matrix that is none (rare:
    a free rotation, a scaling) is reported and ignored."""
    abcd = display_matrix(frame)
    if abcd is None:
        return UPRIGHT
    a, b, c, d = (int(v) for v in np.round(abcd))
    exact = np.allclose(abcd, (a, b, c, d), atol=1e-3)
    if exact and a == d == 0 and abs(b) == abs(c) == 1:
        return Orientation(transpose=True, flip_rows=b < 0, flip_cols=c < 0)
    if exact and b == c == 0 and abs(a) == abs(d) == 1:
        return Orientation(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
    warnings.warn(f"{path}: its display matrix {np.round(abcd, 3).tolist()} is not a right-angle rotation or flip; "
                  "the frames are used as stored.", stacklevel=2)
    return UPRIGHT


def quarter_turns(frame: av.VideoFrame) -> int:
    """The counter-clockwise quarter turns in the frame's display matrix, mirrors ignored, as FFmpeg's
    `av_display_rotation_get` (and decord, which turns by it) reads them."""
    abcd = display_matrix(frame)
    if abcd is None:
        return 0
    return round(-np.degrees(np.arctan2(abcd[1], abcd[0])) / 90) % 4


def turn_upright(image: np.ndarray, orientation: Orientation) -> np.ndarray:
    """`image` (H, W, 3) as a viewer shows it."""
    if orientation.transpose:
        image = image.transpose(1, 0, 2)
    if orientation.flip_rows:
        image = image[::-1]
    if orientation.flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)
