"""An on-disk cache of sampled video frames: a second run over the same videos (a sweep, a re-judge) skips decoding.

    cache = FrameCache()                                   # $FASTERVLM_CACHE/frames, else ~/.cache/fastervlm/frames
    sampled = media.read_video_frames(path, 8, cache=cache)

An entry is an uncompressed .npz (numpy arrays, no pickle) named by a hash of the video file's identity (resolved
path, size, mtime_ns, inode, device) and of the sampling (num_frames, backend, `media.DECODER_VERSION`, the PyAV and
FFmpeg versions, decord's for its backend): a changed file, or a changed decoder, misses. Writes go to a temporary
file in the cache folder and are renamed into place (`os.replace`), so concurrent processes never read half an
entry; an entry that does not load (a crash mid-write on a full disk, a damaged file), or whose frames are not what
this sampling of this video gives (another frame count, other positions, another frame size), is a miss and is
deleted, so that the decoded frames replace it. The
folder is kept under `max_bytes` by deleting the least recently used entries (a hit refreshes an entry's mtime).
Turn it off by passing no cache (the default), or with FASTERVLM_FRAME_CACHE=off for `default_frame_cache`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import av
import numpy as np

from fastervlm import media
from fastervlm.errors import FasterVLMError

DEFAULT_MAX_BYTES = 2 * 2**30
"""2 GiB: about 350 videos' 8 frames at 640x360, 45 at 1920x1080 (frames are kept at their decoded size)."""
ENTRY_SUFFIX = ".npz"
_TEMP_PREFIX = ".tmp-"
_STALE_TEMP_SECONDS = 3600
_OFF = ("0", "off", "false", "no", "none")


def default_frame_cache_dir() -> Path:
    """$FASTERVLM_CACHE/frames, else ~/.cache/fastervlm/frames: beside the tiny checkpoints (`tiny.default_cache_dir`)."""
    return Path(os.environ.get("FASTERVLM_CACHE", Path.home() / ".cache" / "fastervlm")) / "frames"


def default_frame_cache(max_bytes: int = DEFAULT_MAX_BYTES) -> FrameCache | None:
    """The cache a command uses unless told otherwise: None (off) when FASTERVLM_FRAME_CACHE is off/0/false/no,
    a cache in that folder when it names one, else one in `default_frame_cache_dir()`."""
    setting = os.environ.get("FASTERVLM_FRAME_CACHE", "").strip()
    if setting.lower() in _OFF:
        return None
    return FrameCache(setting or None, max_bytes=max_bytes)


class FrameCache:
    """Sampled frames on disk, keyed by the video file's identity and the sampling; bounded, LRU, process-safe."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise FasterVLMError(f"the frame cache's max_bytes must be 0 or more, got {max_bytes}.")
        self.root = Path(root) if root is not None else default_frame_cache_dir()
        self.max_bytes = max_bytes

    def key(self, path: str | os.PathLike, num_frames: int, backend: str) -> str:
        """A hash of what the frames depend on; a file changed in place gets a new size or mtime, hence a new key."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        identity = {
            "path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino,
            "device": stat.st_dev, "num_frames": num_frames, "backend": backend, "decoder": _decoder_versions(backend),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def entry(self, key: str) -> Path:
        return self.root / f"{key}{ENTRY_SUFFIX}"

    def get(self, path: str | os.PathLike, num_frames: int, backend: str) -> media.SampledFrames | None:
        """The cached frames (method "cache"), or None on a miss; a damaged entry is deleted and is a miss."""
        key = self.key(path, num_frames, backend)
        entry = self.entry(key)
        try:
            sampled = _load(entry, key)
            _check_layout(sampled, num_frames, Path(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            with contextlib.suppress(OSError):
                entry.unlink(missing_ok=True)  # torn or damaged: decode again and rewrite it
            return None
        try:
            os.utime(entry)  # most recently used
        except FileNotFoundError:
            pass  # evicted by another process meanwhile: the frames in hand are still right
        return sampled

    def put(self, path: str | os.PathLike, num_frames: int, backend: str, sampled: media.SampledFrames) -> Path | None:
        """Store `sampled` atomically, then evict down to `max_bytes`; a cache that cannot be written only warns."""
        if sampled.frames.nbytes > self.max_bytes:
            return None  # would evict everything, itself included
        key = self.key(path, num_frames, backend)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            target = _write_atomically(self.root, self.entry(key), key, sampled)
            self.evict()
        except OSError as error:
            warnings.warn(f"frame cache {self.root} cannot be written ({error}); going on without caching {path}. "
                          "Free some space, or turn the cache off.", stacklevel=2)
            return None
        return target

    def evict(self) -> None:
        """Delete least recently used entries until the folder holds at most `max_bytes`, and stale temp files."""
        entries, total = [], 0
        for item, stat in _scan(self.root):
            if item.name.startswith(_TEMP_PREFIX):
                if time.time() - stat.st_mtime > _STALE_TEMP_SECONDS:  # left by a crashed writer
                    Path(item.path).unlink(missing_ok=True)
            elif item.name.endswith(ENTRY_SUFFIX):
                entries.append((stat.st_mtime_ns, stat.st_size, Path(item.path)))
                total += stat.st_size
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            entry.unlink(missing_ok=True)
            total -= size

    def total_bytes(self) -> int:
        return sum(stat.st_size for item, stat in _scan(self.root) if item.name.endswith(ENTRY_SUFFIX))

    def clear(self) -> None:
        for item, _ in _scan(self.root):
            if item.name.endswith(ENTRY_SUFFIX) or item.name.startswith(_TEMP_PREFIX):
                Path(item.path).unlink(missing_ok=True)


def _decoder_versions(backend: str) -> dict[str, object]:
    versions: dict[str, object] = {"fastervlm": media.DECODER_VERSION, "av": av.__version__,
                                   "ffmpeg": str(av.library_versions.get("libavcodec"))}
    if backend == "decord":
        try:
            import decord

            versions["decord"] = decord.__version__
        except ImportError:
            pass  # read_video_frames says how to install it
    return versions


def _scan(root: Path) -> list[tuple[os.DirEntry, os.stat_result]]:
    """The folder's files and their stat; an absent folder is an empty cache, a file that another process evicts
    meanwhile is left out."""
    found = []
    try:
        with os.scandir(root) as items:
            for item in items:
                try:
                    if item.is_file():
                        found.append((item, item.stat()))
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        pass
    return found


def _write_atomically(root: Path, target: Path, key: str, sampled: media.SampledFrames) -> Path:
    handle, temp = tempfile.mkstemp(dir=root, prefix=_TEMP_PREFIX, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, key=np.array(key), frames=sampled.frames, total_frames=np.array(sampled.total_frames),
                     indices=np.asarray(sampled.indices, dtype=np.int64))
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def _check_layout(sampled: media.SampledFrames, num_frames: int, path: Path) -> None:
    """ValueError when the entry's frames are not what this sampling of this video gives: `num_frames` frames at
    the sampled positions of its frame count, each of the video stream's size (either way round: a turned video)."""
    if len(sampled.frames) != num_frames or sampled.indices != media.sample_indices(sampled.total_frames, num_frames):
        raise ValueError(f"the entry holds frames {sampled.indices} of {sampled.total_frames}, not {num_frames} sampled")
    size = _stream_size(path)
    if size is not None and sampled.frames.shape[1:3] not in (size, size[::-1]):
        raise ValueError(f"the entry's frames are {sampled.frames.shape[1:3]}, the video's {size}")


def _stream_size(path: Path) -> tuple[int, int] | None:
    """(height, width) the container declares for its video stream (headers only), or None when it does not say."""
    try:
        with av.open(str(path)) as container:
            codec = container.streams.video[0].codec_context
            return (codec.height, codec.width) if codec.height and codec.width else None
    except (av.FFmpegError, IndexError, OSError):
        return None  # the decoder will say what is wrong with the file


def _load(entry: Path, key: str) -> media.SampledFrames:
    """The entry's frames; ValueError when it is not the entry it should be."""
    with np.load(entry, allow_pickle=False) as data:
        if str(data["key"]) != key:
            raise ValueError("the entry belongs to another key")
        frames, indices, total = data["frames"], data["indices"].tolist(), int(data["total_frames"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(indices) != len(frames):
        raise ValueError(f"malformed entry: frames {frames.dtype} {frames.shape}, {len(indices)} indices")
    return media.SampledFrames(frames, indices, total, method="cache")
