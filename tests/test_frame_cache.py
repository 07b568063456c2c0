"""frame_cache.py: a hit gives the same arrays without decoding, a changed file or sampling misses, the folder stays
under its size bound (least recently used out first), and a damaged entry is a miss that heals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fastervlm import media
from fastervlm.tiny.video import write_synthetic_video
from fastervlm.errors import FasterVLMError
from fastervlm.frame_cache import FrameCache, default_frame_cache, default_frame_cache_dir


@pytest.fixture
def video(tmp_path) -> Path:
    return write_synthetic_video(tmp_path / "clip.mp4", num_frames=30)


@pytest.fixture
def no_decoding(monkeypatch):
    """After this, decoding raises: whatever comes back must come from the cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the cache should have answered")

    def install():
        monkeypatch.setattr(media, "_read_pyav", refuse)
        monkeypatch.setattr(media, "_read_decord", refuse)

    return install


def entries(cache: FrameCache) -> list[Path]:
    return sorted(cache.root.glob("*.npz"))


def test_a_hit_returns_identical_arrays_without_decoding(tmp_path, video, no_decoding):
    cache = FrameCache(tmp_path / "cache")
    first = media.read_video_frames(video, 8, cache=cache)
    assert first.method == "seek" and len(entries(cache)) == 1
    no_decoding()
    again = media.read_video_frames(video, 8, cache=cache)
    assert again.method == "cache"
    assert again.frames.dtype == np.uint8 and again.frames.flags.c_contiguous
    np.testing.assert_array_equal(again.frames, first.frames)
    assert (again.indices, again.total_frames) == (first.indices, first.total_frames)
    assert all(type(i) is int for i in again.indices)


def test_the_sampling_is_part_of_the_key(tmp_path, video):
    cache = FrameCache(tmp_path / "cache")
    keys = {cache.key(video, n, backend) for n in (8, 16) for backend in media.VIDEO_BACKENDS}
    assert len(keys) == 6
    media.read_video_frames(video, 8, cache=cache)
    assert cache.get(video, 16, "pyav") is None and cache.get(video, 8, "pyav-scan") is None
    assert cache.get(video, 8, "pyav") is not None


def test_a_changed_file_misses(tmp_path, video):
    cache = FrameCache(tmp_path / "cache")
    before = media.read_video_frames(video, 8, cache=cache)
    write_synthetic_video(video, num_frames=30, seed=5)  # same name, same size class, new content
    after = media.read_video_frames(video, 8, cache=cache)
    assert after.method == "seek" and not np.array_equal(after.frames, before.frames)
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: same bytes, new mtime
    assert cache.get(video, 8, "pyav") is None
    video.write_bytes(video.read_bytes() + b"\0")  # same mtime second, other size
    assert cache.get(video, 8, "pyav") is None


def test_a_decoder_change_misses(tmp_path, video, monkeypatch):
    cache = FrameCache(tmp_path / "cache")
    media.read_video_frames(video, 8, cache=cache)
    monkeypatch.setattr(media, "DECODER_VERSION", media.DECODER_VERSION + 1)
    assert cache.get(video, 8, "pyav") is None


def test_the_size_bound_evicts_the_least_recently_used(tmp_path, no_decoding):
    videos = [write_synthetic_video(tmp_path / f"v{i}.mp4", num_frames=12, seed=i) for i in range(3)]
    entry_bytes = 8 * 96 * 128 * 3
    cache = FrameCache(tmp_path / "cache", max_bytes=int(2.5 * entry_bytes))
    for i, path in enumerate(videos[:2]):
        media.read_video_frames(path, 8, cache=cache)
        os.utime(cache.entry(cache.key(path, 8, "pyav")), ns=(10**9 * (i + 1),) * 2)  # v0 used before v1
    assert cache.get(videos[0], 8, "pyav") is not None  # a hit makes v0 the most recently used
    media.read_video_frames(videos[2], 8, cache=cache)  # over the bound: v1, the least recently used, goes
    assert len(entries(cache)) == 2 and cache.total_bytes() <= cache.max_bytes
    assert cache.get(videos[1], 8, "pyav") is None
    no_decoding()
    assert media.read_video_frames(videos[0], 8, cache=cache).method == "cache"
    assert media.read_video_frames(videos[2], 8, cache=cache).method == "cache"


def test_an_entry_larger_than_the_bound_is_not_stored(tmp_path, video):
    cache = FrameCache(tmp_path / "cache", max_bytes=1000)
    media.read_video_frames(video, 8, cache=cache)
    assert entries(cache) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other key"])
def test_a_damaged_entry_is_a_miss_that_heals(tmp_path, video, damage):
    cache = FrameCache(tmp_path / "cache")
    first = media.read_video_frames(video, 8, cache=cache)
    entry = cache.entry(cache.key(video, 8, "pyav"))
    data = entry.read_bytes()
    if damage == "other key":  # a valid entry under the wrong name (say, copied by hand)
        other = write_synthetic_video(tmp_path / "other.mp4", num_frames=30, seed=9)
        media.read_video_frames(other, 8, cache=cache)
        data = cache.entry(cache.key(other, 8, "pyav")).read_bytes()
    entry.write_bytes({"garbage": b"not a zip file" * 10, "truncated": data[: len(data) // 2], "empty": b"",
                       "other key": data}[damage])
    assert cache.get(video, 8, "pyav") is None
    assert not entry.exists()  # removed, so the next run rewrites it
    again = media.read_video_frames(video, 8, cache=cache)
    assert again.method == "seek" and entry.exists()
    np.testing.assert_array_equal(again.frames, first.frames)
    assert media.read_video_frames(video, 8, cache=cache).method == "cache"


@pytest.mark.parametrize("layout", ["4 frames instead of 8", "other positions", "other size", "other frame count"])
def test_an_entry_with_the_right_key_and_another_layout_is_a_miss_that_heals(tmp_path, video, layout):
    """Such an entry used to be returned as it was, and every item of the video became an error record."""
    from fastervlm.frame_cache import _write_atomically

    cache = FrameCache(tmp_path / "cache")
    first = media.read_video_frames(video, 8, cache=cache)
    key = cache.key(video, 8, "pyav")
    frames, indices, total = first.frames, first.indices, first.total_frames
    if layout == "4 frames instead of 8":
        frames, indices = frames[::2], indices[::2]
    elif layout == "other positions":
        indices = [index + 1 for index in indices]
    elif layout == "other size":
        frames = np.ascontiguousarray(frames[:, ::2, ::2])
    else:
        total = total + 5
    _write_atomically(cache.root, cache.entry(key), key, media.SampledFrames(frames, indices, total))
    assert cache.get(video, 8, "pyav") is None
    assert not cache.entry(key).exists()  # removed, so the next read rewrites it
    again = media.read_video_frames(video, 8, cache=cache)
    assert again.method == "seek"
    np.testing.assert_array_equal(again.frames, first.frames)
    assert media.read_video_frames(video, 8, cache=cache).method == "cache"


def test_writes_leave_no_temporary_files_and_stale_ones_are_swept(tmp_path, video):
    cache = FrameCache(tmp_path / "cache")
    media.read_video_frames(video, 8, cache=cache)
    assert [p.name for p in cache.root.iterdir()] == [entries(cache)[0].name]
    stale, fresh = cache.root / ".tmp-crashed.partial", cache.root / ".tmp-writing.partial"
    stale.write_bytes(b"half an entry")
    fresh.write_bytes(b"being written right now")
    os.utime(stale, (0, 0))
    assert cache.get(video, 8, "pyav") is not None  # temp files are never read as entries
    cache.evict()
    assert not stale.exists() and fresh.exists()


def test_an_unwritable_cache_warns_and_still_returns_frames(tmp_path, video):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go")
    cache = FrameCache(blocker / "cache")
    with pytest.warns(UserWarning, match="frame cache .* cannot be written"):
        sampled = media.read_video_frames(video, 8, cache=cache)
    assert sampled.method == "seek" and len(sampled.frames) == 8


def test_clear_and_bad_bound(tmp_path, video):
    cache = FrameCache(tmp_path / "cache")
    media.read_video_frames(video, 8, cache=cache)
    assert cache.total_bytes() > 8 * 96 * 128 * 3
    cache.clear()
    assert cache.total_bytes() == 0 and entries(cache) == []
    with pytest.raises(FasterVLMError, match="max_bytes must be 0 or more"):
        FrameCache(tmp_path, max_bytes=-1)
    assert FrameCache(tmp_path / "never-made").total_bytes() == 0


def test_default_locations_and_the_off_switch(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTERVLM_FRAME_CACHE", raising=False)
    monkeypatch.setenv("FASTERVLM_CACHE", str(tmp_path / "fv"))
    assert default_frame_cache_dir() == tmp_path / "fv" / "frames"
    assert default_frame_cache().root == tmp_path / "fv" / "frames"
    monkeypatch.delenv("FASTERVLM_CACHE")
    assert default_frame_cache_dir() == Path.home() / ".cache" / "fastervlm" / "frames"
    monkeypatch.setenv("FASTERVLM_FRAME_CACHE", str(tmp_path / "elsewhere"))
    assert default_frame_cache(max_bytes=123).root == tmp_path / "elsewhere"
    assert default_frame_cache(max_bytes=123).max_bytes == 123
    for off in ("off", "0", "FALSE", "no"):
        monkeypatch.setenv("FASTERVLM_FRAME_CACHE", off)
        assert default_frame_cache() is None


HAMMER = """
import hashlib, json, sys
from fastervlm import media
from fastervlm.frame_cache import FrameCache
root, bound, rounds, videos = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
cache = FrameCache(root, max_bytes=bound)
reads = [media.read_video_frames(path, 8, cache=cache) for _ in range(rounds) for path in videos for _ in range(2)]
print(json.dumps([[s.method, hashlib.sha256(s.frames.tobytes()).hexdigest()] for s in reads]))
"""


def test_concurrent_processes_share_a_cache_safely(tmp_path):
    """Two processes read, write and evict in one folder at once (the bound holds 2 of 3 videos; each video is read
    twice in a row, so the second read can hit): every read gives the right frames, no temporary file is left."""
    import hashlib
    import json
    import subprocess
    import sys

    videos = [str(write_synthetic_video(tmp_path / f"v{i}.mp4", num_frames=12, seed=i)) for i in range(3)]
    expected = [hashlib.sha256(media.read_video_frames(path, 8).frames.tobytes()).hexdigest() for path in videos]
    root, bound, rounds = str(tmp_path / "cache"), int(2.5 * 8 * 96 * 128 * 3), 6
    command = [sys.executable, "-c", HAMMER, root, str(bound), str(rounds), *videos]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(worker.communicate(timeout=120)[0]) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    for reads in results:
        assert [digest for _, digest in reads] == [digest for digest in expected for _ in range(2)] * rounds
        assert {method for method, _ in reads} == {"seek", "cache"}
    cache = FrameCache(root, max_bytes=bound)
    assert cache.total_bytes() <= bound and not list(cache.root.glob(".tmp-*"))
