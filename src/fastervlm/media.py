"""Media in, arrays out: video/image decoding (PyAV, decord optional) and frame sampling; no model code (each
model adapter preprocesses the frames its own way).

Frames are sampled as the original Video-LLaVA code samples them: `floor(linspace(0, n-1, F))` over frames
numbered in decode order, as decord numbers them, and converted to rgb24 exactly as decord does. Decoding keeps
only the sampled frames, so a long video never sits in memory. Every unusable file raises `MediaError` naming the
file and the fix.

Seeking (the default pyav backend): one demux pass, no decoding, reads every packet's pts; frame i is the decoder's
i-th output, i.e. the frame with the i-th smallest pts. For each sampled frame we seek to the last keyframe before
it that starts a closed group of pictures, decode forward and check that every frame the decoder gives has the pts
the index expects. Anything unexpected (no pts, open GOPs only, a keyframe flag the decoder disagrees with, a file
that ends early, a container or codec not on the lists below) makes it scan instead, the reference: decode every
frame up to the last sampled one. Both give the same bytes; `SampledFrames.method` says which ran and
`SampledFrames.fallback` why it scanned.

Frames are turned upright by the display matrix the container declares (phones: a quarter turn), in every backend.

No torch: `find_video` and the readers stay cheap to import.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from fastervlm.errors import FasterVLMError, MediaError
from fastervlm.orientation import UPRIGHT, Orientation, orientation_of, quarter_turns, turn_upright

if TYPE_CHECKING:
    from fastervlm.frame_cache import FrameCache

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".gif")
VIDEO_BACKENDS = ("pyav", "pyav-scan", "decord")

DECODER_VERSION = 2
"""Bump whenever the frames a backend returns change (2: seeking, display matrices applied). It is part of the frame
cache's key, so frames cached by an older decoder are never reused."""

SEEK_FORMATS = ("mov", "matroska")
"""Demuxers whose packets carry real presentation timestamps and whose seeks land on keyframes (MP4/MOV, MKV/WebM).
AVI, for one, makes pts up from the decode order; MPEG-TS seeks by byte guesses. Those scan."""
SEEK_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "vp8", "vp9", "av1", "libdav1d", "libaom-av1", "mjpeg"})
"""Codecs whose keyframe flag means "decodable from here". GIF, APNG and the like draw on the previous frame."""
SKIP_CODECS = frozenset({"h264", "mpeg2video", "mpeg4"})
"""Codecs whose non-reference frames no frame reads (H.264 nal_ref_idc 0, MPEG-2/4 B-frames), so seeking need not
decode those before a wanted frame. Not HEVC: its "sub-layer non-reference" pictures may serve higher layers."""
SKIP_MARGIN = 16
"""The last frames before a wanted one are all decoded and checked one by one, as a scan would see them."""

_REENCODE = "re-download it, or re-encode it: ffmpeg -i '{path}' -c:v libx264 -pix_fmt yuv420p fixed.mp4"


@dataclass
class SampledFrames:
    """The frames a model sees, plus where they came from (for reports and pictures)."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB, upright (the container's display matrix applied)."""
    indices: list[int]
    """Source frame number of each row of `frames` (decode order, 0-based)."""
    total_frames: int
    method: str = "scan"
    """How the frames were read: "seek", "scan", "decord", or "cache" (a `frame_cache.FrameCache` hit)."""
    fallback: str | None = None
    """Why the pyav backend scanned instead of seeking; None when it seeked (or was told to scan)."""


def sample_indices(total: int, num: int) -> list[int]:
    """`floor(linspace(0, total-1, num))`, first and last frame included; repeats frames when total < num."""
    if total < 1 or num < 1:
        raise ValueError(f"need total >= 1 and num >= 1, got total={total}, num={num}")
    return np.linspace(0, total - 1, num, dtype=int).tolist()


def existing_file(path: str | os.PathLike, kind: str) -> Path:
    """`path` as a Path when it is a file; else a MediaError naming the problem (`kind`: "video" or "image")."""
    path = Path(path)
    if path.is_dir():
        raise MediaError(f"{path} is a directory, not a {kind} file: pass the path of one {kind} file.")
    if not path.is_file():
        raise MediaError(f"{kind} file not found: {path}. Check the path (and the data folder it should be in).")
    return path


def read_video_frames(
    path: str | os.PathLike, num_frames: int = 8, backend: str = "pyav", cache: FrameCache | None = None
) -> SampledFrames:
    """`num_frames` uniformly sampled RGB frames, upright, the same bytes from every backend.

    "pyav" seeks to the keyframe before each sampled frame and checks every decoded frame's timestamp, scanning
    instead where seeking cannot be trusted; "pyav-scan" always decodes every frame up to the last sampled one;
    "decord" needs `pip install "fastervlm[decord]"`. `cache` keeps the sampled frames on disk between runs.
    """
    if num_frames < 1:
        raise FasterVLMError(f"num_frames must be at least 1, got {num_frames}.")
    if backend not in VIDEO_BACKENDS:
        raise FasterVLMError(f"unknown video backend {backend!r}: use 'pyav' (default), 'pyav-scan' or 'decord'.")
    path = existing_file(path, "video")
    if cache is not None and (hit := cache.get(path, num_frames, backend)) is not None:
        return hit
    if backend == "decord":
        sampled = _read_decord(path, num_frames)
    else:
        sampled = _read_pyav(path, num_frames, seek=backend == "pyav")
    if cache is not None:
        cache.put(path, num_frames, backend, sampled)
    return sampled


def _reason(error: av.FFmpegError) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without its errno and the path again."""
    return getattr(error, "strerror", None) or str(error)


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg's picture demuxers (png_pipe, jpeg_pipe, image2, ...) read a single picture as a one-frame video."""
    name = container.format.name
    return name.startswith("image2") or name.endswith("_pipe")


@contextmanager
def _open_video(path: Path) -> Iterator[av.container.InputContainer]:
    """An open container with a video stream; any PyAV error inside the block becomes a MediaError."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream (audio only, or damaged): pass a video file, "
                                 "or re-download it.")
            if _is_still_image(container):
                codec = container.streams.video[0].codec_context.name.upper()
                raise MediaError(f"{path} holds a still image ({codec}), not a video: pass it with --image to an "
                                 "image model (LLaVA-1.5), or pass a real video file.")
            yield container
    except av.FFmpegError as error:
        raise MediaError(f"{path} is not a video PyAV can read ({_reason(error)}): {_REENCODE.format(path=path)}") from error


def _rgb24(frame: av.VideoFrame, path: Path) -> np.ndarray:
    """The frame as (H, W, 3) uint8 RGB (converted as decord converts), upright."""
    return turn_upright(frame.to_ndarray(format="rgb24"), orientation_of(frame, path))


def _stack(kept: dict[int, np.ndarray], indices: list[int], path: Path) -> np.ndarray:
    sizes = sorted({kept[i].shape[:2] for i in indices})
    if len(sizes) > 1:
        raise MediaError(f"{path} changes its frame size mid-stream ({', '.join(f'{w}x{h}' for h, w in sizes)}): "
                         f"{_REENCODE.format(path=path)}")
    return np.stack([kept[i] for i in indices])


# --- pyav: seek, or scan --------------------------------------------------------------------------------------


class _Untrusted(Exception):
    """Seeking cannot be trusted for this file; the message says why (kept in `SampledFrames.fallback`)."""


@dataclass(frozen=True)
class _SeekIndex:
    """Frame i is the decoder's i-th output, so its pts is the i-th smallest packet pts (decord numbers frames so)."""

    pts: np.ndarray
    """pts of every frame, ascending: frame number -> pts."""
    keys: np.ndarray
    """Frame numbers of the keyframes a seek may start from, ascending (see `_clean_keyframes`)."""

    def key_before(self, index: int) -> int:
        return int(self.keys[np.searchsorted(self.keys, index, side="right") - 1])


def _packet_table(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[np.ndarray, np.ndarray]:
    """pts and keyframe flag of every packet in decode order, demuxed without decoding."""
    pts, keyframe = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # PyAV ends with an empty flush packet
            if packet.pts is None:
                raise _Untrusted("packets without timestamps (pts)")
            if packet.is_corrupt or packet.is_discard:
                raise _Untrusted(f"packet {len(pts)} is flagged corrupt or to be discarded")
            pts.append(packet.pts)
            keyframe.append(packet.is_keyframe)
    except av.FFmpegError as error:
        raise _Untrusted(f"the file does not demux to its end ({_reason(error)})") from error
    if not pts:
        raise _Untrusted("no video packets")
    return np.array(pts, dtype=np.int64), np.array(keyframe, dtype=bool)


def _clean_keyframes(decode_order: np.ndarray, keyframe: np.ndarray) -> np.ndarray:
    """Keyframe packets that split the stream cleanly: every packet before has a smaller pts, none after does.

    Decoding from such a packet gives exactly the frames from its own on, so its decode position is also its frame
    number. An open-GOP keyframe (leading B-frames after it in decode order that show before it) is no seek point.
    """
    before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min], decode_order[:-1]]))
    after = np.minimum.accumulate(decode_order[::-1])[::-1]
    return np.flatnonzero(keyframe & (before < decode_order) & (after == decode_order))


def _seek_index(container: av.container.InputContainer, stream: av.VideoStream) -> _SeekIndex:
    """The frame number -> pts map, or `_Untrusted` where frames cannot be found by pts."""
    demuxer, codec = container.format.name.split(",")[0], stream.codec_context.name
    if codec not in SEEK_CODECS:
        raise _Untrusted(f"{codec} keyframes are not trusted for seeking")
    decode_order, keyframe = _packet_table(container, stream)
    if demuxer not in SEEK_FORMATS:
        raise _Untrusted(f"seeking is trusted in MP4/MOV and MKV/WebM files, not in {demuxer}")
    if demuxer == "mov" and stream.frames not in (0, len(decode_order)):
        raise _Untrusted(f"the index lists {stream.frames} frames but {len(decode_order)} packets demux")
    presentation = np.sort(decode_order)
    if (np.diff(presentation) == 0).any():
        raise _Untrusted("two packets share a timestamp")
    keys = _clean_keyframes(decode_order, keyframe)
    if keys.size == 0 or keys[0] != 0:
        raise _Untrusted("the stream does not start on a keyframe")
    return _SeekIndex(presentation, keys)


def _landing(frame: av.VideoFrame, index: _SeekIndex, target: int) -> int:
    """The frame number a seek landed on: a keyframe of the index, at or before the target, else `_Untrusted`."""
    position = -1 if frame.pts is None else int(np.searchsorted(index.pts, frame.pts))
    if not (frame.key_frame and 0 <= position <= target and index.pts[position] == frame.pts and position in index.keys):
        raise _Untrusted(f"a seek for frame {target} landed on pts {frame.pts}, not on a keyframe before it")
    return position


class _Seeker:
    """Decodes wanted frames in ascending order: seeks to the clean keyframe before one when that skips frames,
    decodes forward, and checks the number (pts rank) of every frame the decoder gives.

    In codecs where no frame reads a non-reference frame (`SKIP_CODECS`), the non-reference frames more than
    `SKIP_MARGIN` frames before the wanted one are not decoded at all (a third less decoding with 2 B-frames). From
    there on every frame is decoded and must come out with the next number, as in a scan.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.VideoStream, index: _SeekIndex) -> None:
        self.container, self.stream, self.index = container, stream, index
        self.skipping = stream.codec_context.name in SKIP_CODECS
        self.frames: Iterator[av.VideoFrame] | None = None
        self.position = -1
        """Number of the next frame the decoder should give; -1 right after a seek."""
        self.skip_below = 0
        """Non-reference frames numbered below this are not decoded."""

    def frame(self, target: int) -> av.VideoFrame:
        key = self.index.key_before(target)
        self.skip_below = target - SKIP_MARGIN if self.skipping else 0
        if self.frames is None or key > self.position:
            self.container.seek(int(self.index.pts[key]), backward=True, any_frame=False, stream=self.stream)
            self.frames, self.position = self._decoded(), -1
        for frame in self.frames:
            number = _landing(frame, self.index, target) if self.position < 0 else self._number(frame, target)
            self.position = number + 1
            if number == target:
                return frame
        raise _Untrusted(f"the stream ended before frame {target}")

    def _number(self, frame: av.VideoFrame, target: int) -> int:
        """The frame's number: the next one, or a later one if every frame in between was left undecoded."""
        pts, expected = self.index.pts, self.position
        number = -1 if frame.pts is None else int(np.searchsorted(pts, frame.pts))
        known = 0 <= number < len(pts) and pts[number] == frame.pts
        if known and number <= target and (number == expected or expected < number <= self.skip_below):
            return number
        wanted = f"pts {pts[expected]}" if expected < len(pts) else "no frame"
        raise _Untrusted(f"the decoder gave pts {frame.pts} where frame {expected} has {wanted}")

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """`container.decode(stream)`, except that the decoder skips the non-reference frames below `skip_below`."""
        codec = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            below = packet.pts is not None and int(np.searchsorted(self.index.pts, packet.pts)) < self.skip_below
            codec.skip_frame = "NONREF" if below else "DEFAULT"
            yield from packet.decode()


def _read_seeking(path: Path, num_frames: int) -> SampledFrames:
    with _open_video(path) as container:
        stream = container.streams.video[0]
        index = _seek_index(container, stream)
        indices = sample_indices(len(index.pts), num_frames)
        stream.thread_type = "AUTO"
        seeker = _Seeker(container, stream, index)
        try:
            kept = {target: _rgb24(seeker.frame(target), path) for target in sorted(set(indices))}
        except av.FFmpegError as error:
            raise _Untrusted(f"decoding after a seek failed ({_reason(error)})") from error
    return SampledFrames(_stack(kept, indices, path), indices, len(index.pts), method="seek")


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
                    kept[count] = _rgb24(frame, path)
                count += 1
                if count > last:
                    break
        except av.FFmpegError as error:
            if count == 0:
                raise MediaError(f"{path} is corrupt or truncated ({_reason(error)}): {_REENCODE.format(path=path)}") from error
            # a damaged tail: the caller sees fewer frames than packets and says so
    return kept, count


def _read_scanning(path: Path, num_frames: int) -> SampledFrames:
    total = _frame_count_hint(path)
    kept: dict[int, np.ndarray] = {}
    if total > 0:
        indices = sample_indices(total, num_frames)
        kept, decoded = _decode(path, set(indices))
        if kept and len(kept) < len(set(indices)):
            warnings.warn(f"{path}: only {decoded} of its {total} frames decode (truncated or damaged file); "
                          f"sampling from those. To fix it, {_REENCODE.format(path=path)}", stacklevel=4)
            total, indices = decoded, sample_indices(decoded, num_frames)
            kept, _ = _decode(path, set(indices))
    if not kept:
        raise MediaError(f"{path} has a video stream but no decodable frames: {_REENCODE.format(path=path)}")
    return SampledFrames(_stack(kept, indices, path), indices, total, method="scan")


def _read_pyav(path: Path, num_frames: int, seek: bool) -> SampledFrames:
    """Seek when asked and trusted, else scan; both give the same frames, numbered in decode order."""
    fallback = None
    if seek:
        try:
            return _read_seeking(path, num_frames)
        except _Untrusted as why:
            fallback = str(why)
    sampled = _read_scanning(path, num_frames)
    sampled.fallback = fallback
    return sampled


# --- decord -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FirstFrame:
    """Frame 0 as PyAV decodes it, and how it should be turned: what decord's output is checked against."""

    upright: np.ndarray
    orientation: Orientation
    turn: int
    """Quarter turns (counter-clockwise) decord gives the frames where it applies the container's rotation."""


def _first_frame(path: Path) -> _FirstFrame | None:
    with _open_video(path) as container:
        for frame in container.decode(container.streams.video[0]):
            orientation = orientation_of(frame, path)
            upright = turn_upright(frame.to_ndarray(format="rgb24"), orientation)
            return _FirstFrame(upright, orientation, quarter_turns(frame))
    return None


def _decord_upright(path: Path, frames: np.ndarray, num_frames: int, first: _FirstFrame) -> np.ndarray:
    """decord's frames upright. decord (0.6.0 on) turns frames by the rotation it finds in the container, but only
    where its bundled FFmpeg exposes one (MP4/MOV, not MKV for eva-decord) and ignoring mirrors. Whether it turned
    them shows in frame 0, which PyAV decodes to the same pixels."""
    candidates = {
        turned: np.stack([turn_upright(np.rot90(f, -first.turn) if turned else f, first.orientation) for f in frames])
        for turned in ((False, True) if first.turn else (False,))
    }
    same = [turned for turned, c in candidates.items() if np.array_equal(c[0], first.upright)]
    if len(same) == 2:  # frame 0 looks the same either way (a black frame): compare every sampled frame
        reference = _read_pyav(path, num_frames, seek=True).frames
        same = [turned for turned, c in candidates.items() if np.array_equal(c, reference)] or [False]
    if not same:
        raise MediaError(f"decord's frames of {path} match neither orientation PyAV decodes (the file declares a "
                         "display rotation): use the default backend, pyav.")
    return candidates[same[0]]


def _read_decord(path: Path, num_frames: int) -> SampledFrames:
    try:
        import decord
    except ImportError as error:
        raise FasterVLMError('the decord backend needs decord: pip install "fastervlm[decord]" '
                             "(or use the default backend, pyav).") from error
    first = _first_frame(path)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        total = len(reader)
        if total == 0:
            raise MediaError(f"{path} has no decodable frames: {_REENCODE.format(path=path)}")
        indices = sample_indices(total, num_frames)
        frames = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as error:  # decord raises both
        raise MediaError(f"decord cannot read {path} ({error}): {_REENCODE.format(path=path)}") from error
    if first is not None and (first.orientation != UPRIGHT or first.turn):
        frames = _decord_upright(path, frames, num_frames, first)
    return SampledFrames(frames, indices, total, method="decord")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One RGB image as a one-frame clip, (1, H, W, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    path = existing_file(path, "image")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(f"{path} is not an image Pillow can read ({error}): pass a .jpg or .png file.") from error
    return rgb[None]


def find_video(directory: Path, stem: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> Path | None:
    """The first existing `directory/stem+ext` (the original tries .mp4, .avi, .mov, .mkv in turn), else None."""
    for extension in extensions:
        candidate = Path(directory) / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None
