"""Media in, arrays out: video/image decoding (PyAV, decord optional) and frame sampling; no model code (each
model adapter preprocesses the frames its own way).

Frames are sampled as the original (spec 1.2): `floor(linspace(0, n-1, F))` over frames numbered in decode order,
as decord numbers them, and converted to rgb24 exactly as decord does. Decoding keeps only the sampled frames, so
a long video never sits in memory. Every unusable file raises `MediaError` naming the file and the fix.

No torch: `find_video` and the readers stay cheap to import.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from fastervlm.errors import FasterVLMError, MediaError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".gif")

_REENCODE = "re-download it, or re-encode it: ffmpeg -i '{path}' -c:v libx264 -pix_fmt yuv420p fixed.mp4"


@dataclass
class SampledFrames:
    """The frames a model sees, plus where they came from (for reports and pictures)."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB."""
    indices: list[int]
    """Source frame number of each row of `frames` (decode order, 0-based)."""
    total_frames: int


def sample_indices(total: int, num: int) -> list[int]:
    """`floor(linspace(0, total-1, num))`, first and last frame included; repeats frames when total < num."""
    if total < 1 or num < 1:
        raise ValueError(f"need total >= 1 and num >= 1, got total={total}, num={num}")
    return np.linspace(0, total - 1, num, dtype=int).tolist()


def _existing_file(path: str | os.PathLike, kind: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise MediaError(f"{path} is a directory, not a {kind} file: pass the path of one {kind} file.")
    if not path.is_file():
        raise MediaError(f"{kind} file not found: {path}. Check the path (and the data folder it should be in).")
    return path


def read_video_frames(path: str | os.PathLike, num_frames: int = 8, backend: str = "pyav") -> SampledFrames:
    """`num_frames` uniformly sampled RGB frames, decoded by PyAV or decord (`pip install "fastervlm[decord]"`)."""
    if num_frames < 1:
        raise FasterVLMError(f"num_frames must be at least 1, got {num_frames}.")
    path = _existing_file(path, "video")
    if backend == "pyav":
        return _read_pyav(path, num_frames)
    if backend == "decord":
        return _read_decord(path, num_frames)
    raise FasterVLMError(f"unknown video backend {backend!r}: use 'pyav' (default) or 'decord'.")


def _reason(error: av.FFmpegError) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without its errno and the path again."""
    return getattr(error, "strerror", None) or str(error)


@contextmanager
def _open_video(path: Path) -> Iterator[av.container.InputContainer]:
    """An open container with a video stream; any PyAV error inside the block becomes a MediaError."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream (audio only, or damaged): pass a video file, "
                                 "or re-download it.")
            yield container
    except av.FFmpegError as error:
        raise MediaError(f"{path} is not a video PyAV can read ({_reason(error)}): {_REENCODE.format(path=path)}") from error


def _frame_count_hint(path: Path) -> int:
    """The number of video packets, decord's frame count: the MP4/MOV sample table has it, else one demux pass.

    The decode pass checks it: a truncated file decodes fewer frames than it has packets.
    """
    with _open_video(path) as container:
        stream = container.streams.video[0]
        if "mp4" in container.format.name.split(",") and stream.frames > 0:
            return stream.frames
        count = 0
        try:
            for packet in container.demux(stream):
                count += packet.size > 0  # PyAV ends with an empty flush packet
        except av.FFmpegError:
            pass  # a truncated file: the decode pass finds out how much is usable
        return count


def _rgb24(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _decode(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode up to the last wanted frame, converting only the wanted ones; also return how many frames decoded
    (the whole stream's count when it ends, or breaks, before the last wanted frame)."""
    kept: dict[int, np.ndarray] = {}
    count, last = 0, max(wanted)
    with _open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    kept[count] = _rgb24(frame)
                count += 1
                if count > last:
                    break
        except av.FFmpegError as error:
            if count == 0:
                raise MediaError(f"{path} is corrupt or truncated ({_reason(error)}): {_REENCODE.format(path=path)}") from error
            # a damaged tail: the caller sees fewer frames than packets and says so
    return kept, count


def _read_pyav(path: Path, num_frames: int) -> SampledFrames:
    total = _frame_count_hint(path)
    kept: dict[int, np.ndarray] = {}
    if total > 0:
        indices = sample_indices(total, num_frames)
        kept, decoded = _decode(path, set(indices))
        if kept and len(kept) < len(set(indices)):
            warnings.warn(f"{path}: only {decoded} of its {total} frames decode (truncated or damaged file); "
                          f"sampling from those. To fix it, {_REENCODE.format(path=path)}", stacklevel=3)
            total, indices = decoded, sample_indices(decoded, num_frames)
            kept, _ = _decode(path, set(indices))
    if not kept:
        raise MediaError(f"{path} has a video stream but no decodable frames: {_REENCODE.format(path=path)}")
    return SampledFrames(np.stack([kept[i] for i in indices]), indices, total)


def _read_decord(path: Path, num_frames: int) -> SampledFrames:
    try:
        import decord
    except ImportError as error:
        raise FasterVLMError('the decord backend needs decord: pip install "fastervlm[decord]" '
                             "(or use the default backend, pyav).") from error
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        total = len(reader)
        if total == 0:
            raise MediaError(f"{path} has no decodable frames: {_REENCODE.format(path=path)}")
        indices = sample_indices(total, num_frames)
        frames = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as error:  # decord raises both
        raise MediaError(f"decord cannot read {path} ({error}): {_REENCODE.format(path=path)}") from error
    return SampledFrames(frames, indices, total)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One RGB image as a one-frame clip, (1, H, W, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    path = _existing_file(path, "image")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(f"{path} is not an image Pillow can read ({error}): pass a .jpg or .png file.") from error
    return rgb[None]


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


def find_video(directory: Path, stem: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> Path | None:
    """The first existing `directory/stem+ext` (the original tries .mp4, .avi, .mov, .mkv in turn), else None."""
    for extension in extensions:
        candidate = Path(directory) / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None
