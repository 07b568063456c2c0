"""media.py: frame sampling, decoding (checked against a naive full decode and decord), and the MediaError cases."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from media_helpers import decode_all
from fastervlm import media
from fastervlm.tiny.video import write_synthetic_video
from fastervlm.errors import FasterVLMError, MediaError

try:
    import decord
except ImportError:
    decord = None


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_synthetic_video(tmp_path_factory.mktemp("media") / "clip.mp4", num_frames=30)


# --- sampling -------------------------------------------------------------------------------------------------


def test_sample_indices_spec_example():
    assert media.sample_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]


@pytest.mark.parametrize("total", [1, 2, 3, 7, 8, 9, 100, 2999, 100_003])
@pytest.mark.parametrize("num", [1, 8, 16])
def test_sample_indices_is_floor_linspace(total, num):
    indices = media.sample_indices(total, num)
    assert indices == np.linspace(0, total - 1, num, dtype=int).tolist()
    assert indices == [math.floor(x) for x in np.linspace(0, total - 1, num)]
    assert len(indices) == num and indices[0] == 0 and all(type(i) is int for i in indices)
    if num > 1:
        assert indices[-1] == total - 1


def test_sample_indices_short_video_repeats_frames():
    assert media.sample_indices(3, 8) == [0, 0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError):
        media.sample_indices(0, 8)


# --- decoding -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("num_frames", [8, 5])
def test_sampled_frames_equal_full_decode(tmp_path, suffix, num_frames):
    path = write_synthetic_video(tmp_path / f"clip{suffix}", num_frames=27, seed=3)
    with av.open(str(path)) as container:  # mkv has no frame count: the demux-count path is the one checked
        assert container.streams.video[0].frames == (27 if suffix == ".mp4" else 0)
    everything = decode_all(path)
    sampled = media.read_video_frames(path, num_frames)
    assert sampled.total_frames == len(everything) == 27
    assert sampled.indices == media.sample_indices(27, num_frames)
    assert sampled.frames.dtype == np.uint8 and sampled.frames.shape == (num_frames, 96, 128, 3)
    np.testing.assert_array_equal(sampled.frames, np.stack([everything[i] for i in sampled.indices]))


@pytest.fixture(scope="module")
def gif(tmp_path_factory, video) -> Path:
    path = tmp_path_factory.mktemp("gif") / "clip.gif"
    images = [Image.fromarray(frame) for frame in decode_all(video)[:20]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=125)
    return path


def test_gif_frames_equal_full_decode(gif):
    everything = decode_all(gif)
    sampled = media.read_video_frames(gif, 8)
    assert sampled.total_frames == len(everything) == 20
    np.testing.assert_array_equal(sampled.frames, np.stack([everything[i] for i in media.sample_indices(20, 8)]))


def test_short_video_repeats_frames(tmp_path):
    path = write_synthetic_video(tmp_path / "short.mp4", num_frames=3)
    sampled = media.read_video_frames(path, 8)
    everything = decode_all(path)
    assert sampled.indices == [0, 0, 0, 0, 1, 1, 1, 2] and sampled.total_frames == 3
    np.testing.assert_array_equal(sampled.frames, np.stack([everything[i] for i in sampled.indices]))


def test_only_sampled_frames_are_converted(video, monkeypatch):
    """Memory stays at num_frames frames: only the sampled frames are turned into arrays."""
    converted = []
    real = media._rgb24
    monkeypatch.setattr(media, "_rgb24", lambda frame, path: converted.append(frame) or real(frame, path))
    media.read_video_frames(video, 8)
    assert len(converted) == 8
    converted.clear()
    media.read_video_frames(video, 1)
    assert len(converted) == 1


def test_synthetic_video_is_deterministic_h264_and_varied(tmp_path, video):
    again = write_synthetic_video(tmp_path / "again.mp4", num_frames=30)
    other = write_synthetic_video(tmp_path / "other.mp4", num_frames=30, seed=1)
    frames = np.stack(decode_all(video))
    np.testing.assert_array_equal(frames, np.stack(decode_all(again)))
    assert not np.array_equal(frames, np.stack(decode_all(other)))
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))  # every frame moves
    patches = frames[0].reshape(6, 16, 8, 16, 3).transpose(0, 2, 1, 3, 4).reshape(48, -1)
    assert len(np.unique(patches, axis=0)) > 40  # patches differ within a frame
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.frames, stream.average_rate) == (30, 8)
    with pytest.raises(ValueError, match="even"):
        write_synthetic_video(tmp_path / "odd.mp4", height=95)


# --- decoding errors ------------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MediaError, match="not found: .*nowhere.mp4"):
        media.read_video_frames(tmp_path / "nowhere.mp4")
    with pytest.raises(MediaError, match="is a directory"):
        media.read_video_frames(tmp_path)


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaError, match="notes.mp4 is not a video.*ffmpeg -i"):
        media.read_video_frames(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "speech.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(MediaError, match="speech.mp4 has no video stream"):
        media.read_video_frames(path)


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1
    with pytest.raises(MediaError, match="empty.avi has a video stream but no decodable frames"):
        media.read_video_frames(path)


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> dict[bool, bytes]:
    folder = tmp_path_factory.mktemp("truncated")
    return {
        faststart: write_synthetic_video(folder / f"full{faststart}.mp4", faststart=faststart).read_bytes()
        for faststart in (False, True)
    }


@pytest.mark.parametrize("faststart", [False, True])
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.3, 0.6, 0.9])
def test_truncated_file_gives_media_error_or_the_frames_that_decode(tmp_path, video_bytes, faststart, fraction):
    data = video_bytes[faststart]
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            sampled = media.read_video_frames(path, 8)
        except MediaError as error:
            assert "cut.mp4" in str(error) and "re-download it" in str(error)
            return
    everything = decode_all(path)
    assert 0 < sampled.total_frames == len(everything) < 24
    assert sampled.indices == media.sample_indices(len(everything), 8)
    np.testing.assert_array_equal(sampled.frames, np.stack([everything[i] for i in sampled.indices]))


def test_truncated_index_first_file_returns_decodable_frames_with_a_warning(tmp_path, video_bytes):
    data = video_bytes[True]
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.warns(UserWarning, match=r"cut.mp4: only \d+ of its 24 frames decode"):
        sampled = media.read_video_frames(path, 8)
    assert 0 < sampled.total_frames < 24 and sampled.indices[-1] == sampled.total_frames - 1


def test_bad_arguments(video):
    with pytest.raises(FasterVLMError, match="num_frames"):
        media.read_video_frames(video, 0)
    with pytest.raises(FasterVLMError, match="unknown video backend 'opencv'"):
        media.read_video_frames(video, backend="opencv")


# --- decord ---------------------------------------------------------------------------------------------------


def test_decord_missing_names_the_extra(video, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord now raises ImportError
    with pytest.raises(FasterVLMError, match=r'pip install "fastervlm\[decord\]"'):
        media.read_video_frames(video, backend="decord")


@pytest.mark.skipif(decord is None, reason="decord not installed (pip install eva-decord)")
@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_pyav_equals_decord_byte_for_byte(tmp_path, suffix):
    path = write_synthetic_video(tmp_path / f"clip{suffix}", num_frames=31, seed=2)
    ours = media.read_video_frames(path, 8)
    theirs = media.read_video_frames(path, 8, backend="decord")
    assert ours.total_frames == theirs.total_frames == len(decord.VideoReader(str(path)))
    assert ours.indices == theirs.indices
    np.testing.assert_array_equal(ours.frames, theirs.frames)


@pytest.mark.skipif(decord is None, reason="decord not installed (pip install eva-decord)")
def test_decord_errors_are_media_errors(tmp_path, gif):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    with pytest.raises(MediaError, match="notes.mp4"):
        media.read_video_frames(path, backend="decord")
    with pytest.raises(MediaError, match="decord cannot read .*clip.gif"):  # decord has no frame count for GIFs
        media.read_video_frames(gif, backend="decord")


# --- images ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_read_image_gives_one_rgb_frame(tmp_path, mode):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    source = Image.fromarray(pixels).convert(mode)
    source.save(tmp_path / "picture.png")
    image = media.read_image(tmp_path / "picture.png")
    assert image.dtype == np.uint8 and image.shape == (1, 20, 30, 3)
    np.testing.assert_array_equal(image[0], np.asarray(source.convert("RGB")))


def test_read_image_errors(tmp_path):
    with pytest.raises(MediaError, match="not found: .*absent.png"):
        media.read_image(tmp_path / "absent.png")
    with pytest.raises(MediaError, match="is a directory"):
        media.read_image(tmp_path)
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(MediaError, match="fake.png is not an image"):
        media.read_image(tmp_path / "fake.png")


# --- lookup ---------------------------------------------------------------------------------------------------


def test_find_video_tries_extensions_in_order(tmp_path):
    assert media.find_video(tmp_path, "v_abc") is None
    (tmp_path / "v_abc.avi").write_bytes(b"")
    assert media.find_video(tmp_path, "v_abc") == tmp_path / "v_abc.avi"
    (tmp_path / "v_abc.mp4").write_bytes(b"")
    assert media.find_video(tmp_path, "v_abc") == tmp_path / "v_abc.mp4"
    (tmp_path / "clip.2.mkv").mkdir()  # a folder with a video's name is not a video
    (tmp_path / "clip.2.gif").write_bytes(b"")
    assert media.find_video(tmp_path, "clip.2") == tmp_path / "clip.2.gif"
    assert media.find_video(tmp_path, "clip.2", extensions=(".mp4",)) is None


def test_an_ffmpeg_error_is_reported_in_words_without_errno(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(media.MediaError) as caught:
        media.read_video_frames(text)
    assert "Errno" not in str(caught.value) and "Invalid data" in str(caught.value)
