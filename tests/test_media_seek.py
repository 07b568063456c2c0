"""media.py's seeking reader: the same bytes as the sequential scan (and decord) on MP4/MKV with B-frames and several
GOP lengths, the scan fallback taken wherever seeking cannot be trusted, display matrices applied in every backend,
and still images refused. Test videos are small (96x64) and generated here with PyAV."""

from __future__ import annotations

import struct
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from media_helpers import decode_all
from fastervlm import media
from fastervlm.errors import MediaError

try:
    import decord
except ImportError:
    decord = None

needs_decord = pytest.mark.skipif(decord is None, reason="decord not installed (pip install eva-decord)")
writes_display_matrices = pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
                                             reason="writing a display matrix needs PyAV >= 18")
BACKENDS = ("pyav", "pyav-scan")


def picture(i: int, height: int = 64, width: int = 96) -> np.ndarray:
    """Frame i: a gradient that moves with i, a square whose position encodes i, so no two frames look alike."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 2 + i * 3) % 256, (yy * 3 + i * 5) % 256, np.full_like(xx, (i * 37) % 256)], -1)
    image[8:24, (i * 4) % (width - 16):][:, :16] = 255
    return image.astype(np.uint8)


def encode(path: Path, frames: int = 240, *, gop: int = 12, bframes: int = 2, codec: str = "libx264",
           options: dict[str, str] | None = None, rotation: int | None = None, hflip: bool = False,
           vflip: bool = False, first: np.ndarray | None = None) -> Path:
    """A 96x64 video; keyframes exactly every `gop` frames (scene-cut keyframes off) unless options say otherwise."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"bf": str(bframes), "sc_threshold": "0", **(options or {})}
        stream.codec_context.gop_size = gop
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for i in range(frames):
            image = first if (i == 0 and first is not None) else picture(i)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def remux(source: Path, target: Path, skip: int = 0, **options) -> Path:
    """The packets of `source` (from packet `skip` on, decode order) in another container."""
    with av.open(str(source)) as inp, av.open(str(target), "w", **options) as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for number, packet in enumerate(p for p in inp.demux(stream) if p.size):
            if number >= skip:
                packet.stream = copy
                out.mux(packet)
    return target


def read_quietly(path: Path, num_frames: int, backend: str) -> media.SampledFrames:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged file warns that fewer frames decode; the frames are checked
        return media.read_video_frames(path, num_frames, backend)


def assert_same(path: Path, num_frames: int, method: str) -> media.SampledFrames:
    """pyav (seek) == pyav-scan == the naive full decode, byte for byte, and pyav took `method`."""
    seek, scan = (read_quietly(path, num_frames, backend) for backend in BACKENDS)
    everything = decode_all(path)
    assert (seek.method, scan.method) == (method, "scan")
    assert seek.indices == scan.indices == media.sample_indices(seek.total_frames, num_frames)
    assert seek.total_frames == scan.total_frames
    np.testing.assert_array_equal(seek.frames, scan.frames)
    np.testing.assert_array_equal(seek.frames, np.stack([everything[i] for i in seek.indices]))
    return seek


# --- seek == scan ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """300 frames with 2 B-frames, GOPs of 1 (all intra), 12, 60 and 250 frames, as MP4 and as MKV (same bitstream)."""
    folder = tmp_path_factory.mktemp("seek")
    found = {}
    for gop in (1, 12, 60, 250):
        mp4 = encode(folder / f"gop{gop}.mp4", 300, gop=gop)
        found["mp4", gop] = mp4
        found["mkv", gop] = remux(mp4, folder / f"gop{gop}.mkv")
    return found


def test_test_videos_have_b_frames_and_distinct_frames(videos):
    with av.open(str(videos["mp4", 12])) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == 300
    assert [p.pts for p in packets] != sorted(p.pts for p in packets)  # B-frames: decode order is not display order
    with av.open(str(videos["mp4", 12])) as container:
        assert av.video.frame.PictureType.B in {frame.pict_type for frame in container.decode(video=0)}
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == list(range(0, 300, 12))
    frames = decode_all(videos["mkv", 12])
    assert len(frames) == 300 and all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))


@pytest.mark.parametrize("container", ["mp4", "mkv"])
@pytest.mark.parametrize("gop", [1, 12, 60, 250])
@pytest.mark.parametrize("num_frames", [8, 37])
def test_seek_equals_scan_byte_for_byte(videos, container, gop, num_frames):
    assert_same(videos[container, gop], num_frames, "seek").fallback is None


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_seek_lands_on_the_keyframe_before_each_sampled_frame(videos, container, monkeypatch):
    """GOP 12: frame 42 starts from keyframe 36, never from the start; frames in the same GOP need no seek."""
    landed = []
    real = media._landing
    monkeypatch.setattr(media, "_landing", lambda *args: landed.append(real(*args)) or landed[-1])
    sampled = media.read_video_frames(videos[container, 12], 8)
    assert sampled.indices == [0, 42, 85, 128, 170, 213, 256, 299]
    assert landed == [0, 36, 84, 120, 168, 204, 252, 288]


def test_clean_keyframes_skip_open_gop_keyframes():
    """Decode order pts; keyframes at 0, 4 (closed: nothing after it shows before it) and 7 (open: pts 6 follows)."""
    pts = np.array([0, 3, 1, 2, 4, 6, 5, 8, 6.5, 7, 9]).astype(np.int64) * 2
    pts[8] = 13  # 6.5 * 2: a leading frame that shows before keyframe 7 (pts 16) but decodes after it
    keyframe = np.zeros(len(pts), bool)
    keyframe[[0, 4, 7]] = True
    assert media._clean_keyframes(pts, keyframe).tolist() == [0, 4]


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_open_gop_and_b_pyramid(tmp_path, container):
    """Open GOPs (keyframes with leading B-frames) are no seek points; the frames still equal the scan's."""
    mp4 = encode(tmp_path / "open.mp4", 150, gop=30, bframes=3, options={"x264-params": "open-gop=1:b-pyramid=normal"})
    path = mp4 if container == "mp4" else remux(mp4, tmp_path / "open.mkv")
    for num_frames in (8, 40):
        assert_same(path, num_frames, "seek")


def test_variable_frame_rate(tmp_path):
    """Frames numbered by pts rank, not by pts / frame duration: irregular gaps change nothing."""
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = 96, 64, "yuv420p", {"bf": "2", "sc_threshold": "0"}
        stream.codec_context.gop_size, stream.codec_context.time_base = 10, Fraction(1, 1000)
        pts = np.cumsum(np.random.default_rng(0).integers(10, 200, 120))
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        gaps = np.diff(sorted(p.pts for p in container.demux(video=0) if p.size))
    assert len(set(gaps.tolist())) > 20  # really variable
    assert_same(path, 8, "seek")


@pytest.mark.parametrize(("codec", "suffix"), [("libx265", ".mkv"), ("mpeg4", ".mp4"), ("libvpx-vp9", ".webm")])
def test_other_codecs(tmp_path, codec, suffix):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg has no {codec}")
    options = {"x265-params": "log-level=error"} if codec == "libx265" else {}
    assert_same(encode(tmp_path / f"clip{suffix}", 100, gop=25, codec=codec, options=options), 8, "seek")


# --- the fallback to the scan ---------------------------------------------------------------------------------


def _moov(data: bytes) -> tuple[int, int]:
    """Where the top-level moov box starts and ends in an MP4 file."""
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"moov":
            return offset, offset + size
        offset += size
    raise AssertionError("no moov box")


def test_fallback_when_the_index_lies_about_presentation_times(tmp_path, videos):
    """Damaged index: every composition offset (ctts) set to one value, so pts order is decode order. Sorting pts
    then numbers frames differently from the decoder's output; the pts check catches it on the first B-frame."""
    data = bytearray(videos["mp4", 12].read_bytes())
    start, end = _moov(data)
    ctts = data.index(b"ctts", start, end)
    for entry in range(struct.unpack(">I", data[ctts + 8 : ctts + 12])[0]):
        data[ctts + 16 + 8 * entry : ctts + 20 + 8 * entry] = struct.pack(">I", 1024)
    path = tmp_path / "ctts.mp4"
    path.write_bytes(bytes(data))
    sampled = assert_same(path, 8, "scan")
    assert sampled.fallback.startswith("the decoder gave pts")


def test_fallback_without_timestamps(tmp_path, videos):
    """A raw H.264 stream has no container, hence no pts."""
    path = remux(videos["mp4", 12], tmp_path / "raw.h264", format="h264")
    assert assert_same(path, 8, "scan").fallback == "packets without timestamps (pts)"


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_fallback_when_the_stream_does_not_start_on_a_keyframe(tmp_path, videos, container):
    path = remux(videos["mp4", 12], tmp_path / f"cut.{container}", skip=5)
    sampled = assert_same(path, 8, "scan")
    # MP4 may also mark the packets before the first keyframe as ones to discard (an edit list): either way, scan
    assert sampled.fallback in ("the stream does not start on a keyframe", "packet 1 is flagged corrupt or to be discarded")
    assert sampled.total_frames < 295  # the decoder drops the frames before the first keyframe; so does the scan


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_fallback_on_a_truncated_file(tmp_path, fraction):
    """Index first (faststart), data cut: the index promises frames whose packets are gone."""
    full = remux(encode(tmp_path / "full.mp4", 120), tmp_path / "fs.mp4", options={"movflags": "faststart"})
    data = full.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    sampled = assert_same(path, 8, "scan")
    assert "corrupt" in sampled.fallback or "demux" in sampled.fallback
    assert sampled.total_frames < 120


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_a_truncated_mkv_gives_the_scans_frames(tmp_path, videos, fraction):
    """MKV has its index (cues) at the end: cut, the file still demuxes to a clean end, so seeking may stay; either
    way the frames are the scan's, counted from the packets that are left."""
    data = videos["mkv", 12].read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: int(len(data) * fraction)])
    sampled = assert_same(path, 8, read_quietly(path, 8, "pyav").method)
    assert sampled.total_frames < 300


def test_fallback_in_containers_with_made_up_timestamps(tmp_path):
    """AVI has no presentation timestamps (FFmpeg numbers packets in decode order): scan."""
    path = encode(tmp_path / "clip.avi", 60)
    assert assert_same(path, 8, "scan").fallback == "seeking is trusted in MP4/MOV and MKV/WebM files, not in avi"


def test_fallback_for_codecs_without_independent_keyframes(tmp_path):
    path = tmp_path / "clip.gif"
    images = [Image.fromarray(picture(i)) for i in range(20)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100)
    assert assert_same(path, 8, "scan").fallback == "gif keyframes are not trusted for seeking"


def test_scan_backend_never_seeks(videos):
    sampled = media.read_video_frames(videos["mp4", 12], 8, backend="pyav-scan")
    assert (sampled.method, sampled.fallback) == ("scan", None)


# --- decord ---------------------------------------------------------------------------------------------------


@needs_decord
@pytest.mark.parametrize("container", ["mp4", "mkv"])
@pytest.mark.parametrize("gop", [12, 250])
def test_seek_equals_decord(videos, container, gop):
    ours = media.read_video_frames(videos[container, gop], 8)
    theirs = media.read_video_frames(videos[container, gop], 8, backend="decord")
    assert (ours.method, theirs.method) == ("seek", "decord")
    assert ours.total_frames == theirs.total_frames == 300 and ours.indices == theirs.indices
    np.testing.assert_array_equal(ours.frames, theirs.frames)


# --- display matrices -----------------------------------------------------------------------------------------


def expected_upright(raw: np.ndarray, rotation: int, hflip: bool, vflip: bool) -> np.ndarray:
    """PyAV's `set_display_rotation`: turn counter-clockwise by `rotation`, then mirror."""
    image = np.rot90(raw, rotation // 90)
    image = image[:, ::-1] if hflip else image
    return image[::-1] if vflip else image


ORIENTATIONS = [(90, False, False), (-90, False, False), (180, False, False), (0, True, False), (0, False, True),
                (90, True, False)]


@writes_display_matrices
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize(("rotation", "hflip", "vflip"), ORIENTATIONS)
def test_display_matrix_is_applied_by_seek_and_scan(tmp_path, suffix, rotation, hflip, vflip):
    path = encode(tmp_path / f"phone{suffix}", 40, rotation=rotation, hflip=hflip, vflip=vflip)
    sampled = assert_upright(path, rotation, hflip, vflip)
    assert sampled.frames.shape[1:3] == ((96, 64) if rotation % 180 else (64, 96))


def assert_upright(path: Path, rotation: int, hflip: bool, vflip: bool, backends=BACKENDS) -> media.SampledFrames:
    raw = decode_all(path)
    results = [media.read_video_frames(path, 8, backend) for backend in backends]
    expected = np.stack([expected_upright(raw[i], rotation, hflip, vflip) for i in results[0].indices])
    for sampled in results:
        np.testing.assert_array_equal(sampled.frames, expected)
    return results[0]


@writes_display_matrices
@needs_decord
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize(("rotation", "hflip", "vflip"), ORIENTATIONS)
def test_display_matrix_is_applied_to_decord_frames(tmp_path, suffix, rotation, hflip, vflip):
    """decord turns MP4 frames itself (by the rotation only: a mirror becomes a half turn), not MKV ones: both
    come out as a player shows them."""
    path = encode(tmp_path / f"phone{suffix}", 40, rotation=rotation, hflip=hflip, vflip=vflip)
    assert_upright(path, rotation, hflip, vflip, backends=("decord",))


@writes_display_matrices
@needs_decord
def test_decord_orientation_when_the_first_frame_is_symmetric(tmp_path, monkeypatch):
    """A black first frame looks the same turned or not: the other sampled frames decide (read by PyAV)."""
    path = encode(tmp_path / "black.mp4", 40, rotation=180, first=np.zeros((64, 96, 3), np.uint8))
    references = []
    real = media._read_pyav
    monkeypatch.setattr(media, "_read_pyav", lambda *args, **kw: references.append(args) or real(*args, **kw))
    assert_upright(path, 180, False, False, backends=("decord",))
    assert len(references) == 1
    references.clear()
    assert_upright(encode(tmp_path / "plain.mp4", 40, rotation=180), 180, False, False, backends=("decord",))
    assert references == []  # an asymmetric first frame settles it alone


@writes_display_matrices
def test_a_display_matrix_that_is_no_right_angle_warns_and_is_ignored(tmp_path):
    path = tmp_path / "tilted.mp4"
    c, s = int(np.cos(np.pi / 4) * 65536), int(np.sin(np.pi / 4) * 65536)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_matrix([c, -s, 0, s, c, 0, 0, 0, 1 << 30])
        for i in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")))
        container.mux(stream.encode())
    with pytest.warns(UserWarning, match=r"tilted.mp4: its display matrix .* is not a right-angle"):
        sampled = media.read_video_frames(path, 4)
    np.testing.assert_array_equal(sampled.frames, np.stack([decode_all(path)[i] for i in sampled.indices]))


# --- still images ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "codec"), [("PNG", "PNG"), ("JPEG", "MJPEG")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_still_image_named_like_a_video_is_refused(tmp_path, fmt, codec, backend):
    path = tmp_path / "holiday.mp4"
    Image.fromarray(picture(0)).save(path, format=fmt)
    with pytest.raises(MediaError, match=rf"holiday.mp4 holds a still image \({codec}\), not a video: pass it with "
                                         r"--image .* or pass a real video file"):
        media.read_video_frames(path, 8, backend)


@needs_decord
def test_a_still_image_is_refused_by_the_decord_backend_too(tmp_path):
    path = tmp_path / "holiday.mp4"
    Image.fromarray(picture(0)).save(path, format="PNG")
    with pytest.raises(MediaError, match="holiday.mp4 holds a still image"):
        media.read_video_frames(path, 8, "decord")


def test_non_reference_frames_long_before_a_wanted_one_are_not_decoded(videos, monkeypatch):
    """H.264 with B-frames, GOP 250: skipping non-reference frames decodes far fewer frames, same bytes."""
    given = []
    real = media._Seeker._decoded

    def counting(self):
        for frame in real(self):
            given.append(frame.pts)
            yield frame

    monkeypatch.setattr(media._Seeker, "_decoded", counting)
    skipping = media.read_video_frames(videos["mkv", 250], 8)
    skipped_count = len(given)
    given.clear()
    monkeypatch.setattr(media, "SKIP_CODECS", frozenset())
    decoding_all = media.read_video_frames(videos["mkv", 250], 8)
    assert (skipping.method, decoding_all.method) == ("seek", "seek")
    np.testing.assert_array_equal(skipping.frames, decoding_all.frames)
    assert len(given) == 214 + 50  # 0..213 from the start, a seek to keyframe 250, then 250..299
    # 2 B-frames, one of them a reference (x264's b-pyramid): a third of the frames before each margin are skipped
    assert len(given) - skipped_count >= 40, skipped_count
