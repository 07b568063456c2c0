"""The temporal methods on a clip whose first frames repeat and whose last frames change: the repeated frames get
fewer tokens than the changing ones, within the global budget T x L. On tokens built so that the repetition is
real (one frame's tokens + noise), and once end to end through `fastervlm answer` on a tiny checkpoint with a video
whose first frames are identical.

What "fewer" means follows each reference: VidCom2 gives every frame a budget by its uniqueness (a repeated frame
never more than a changing one, the repeated frames fewer in all); FastVID keeps each segment's budget in
proportion to its length but spends the merged part on a few anchor frames, so every repeated frame but the anchor
frames keeps only its salient tokens, and the anchors' merged tokens absorb the candidates of the whole segment."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fastervlm.cli import main
from fastervlm.methods import VisualTokens, create_pruner
from fastervlm.methods.fastvid import segment_lengths

REPEATED, CHANGING, PATCHES, WIDTH = 12, 4, 30, 16


def repeating_clip(seed: int = 0) -> VisualTokens:
    """REPEATED frames = one frame's tokens + 1% noise, then CHANGING frames of fresh random tokens."""
    generator = torch.Generator().manual_seed(seed)
    still = torch.randn(PATCHES, WIDTH, generator=generator)
    repeated = still + 0.01 * torch.randn(REPEATED, PATCHES, WIDTH, generator=generator)
    changing = torch.randn(CHANGING, PATCHES, WIDTH, generator=generator)
    projected = torch.cat([repeated, changing])
    frames = REPEATED + CHANGING
    return VisualTokens(torch.randn(frames, PATCHES, 8, generator=generator), projected=projected,
                        cls_scores=torch.rand(frames, PATCHES, generator=generator))


@pytest.mark.parametrize("keep", [3, 7, 10])
def test_vidcom2_gives_repeated_frames_fewer_tokens(keep: int) -> None:
    counts = create_pruner("vidcom2", keep=keep).select(repeating_clip(keep)).tokens_per_frame
    repeated, changing = counts[:REPEATED], counts[REPEATED:]
    assert sum(counts) == (REPEATED + CHANGING) * keep
    assert max(repeated) <= min(changing)
    assert sum(repeated) / REPEATED < sum(changing) / CHANGING


@pytest.mark.parametrize("keep", [5, 8, 13])
def test_fastvid_merges_repeated_frames_into_anchor_frames(keep: int) -> None:
    """Default settings (c = 8, p = 4) on 16 frames: 7 cuts, 4 of them around the changing frames (each its own
    segment, L tokens), 3 among the repeated ones; a repeated frame keeps its salient tokens only, unless it is its
    segment's anchor frame (the last, and every 4th before it), which holds the segment's merged tokens."""
    pruner = create_pruner("fastvid", keep=keep)
    clip = repeating_clip(keep)
    selection = pruner.select(clip)
    counts = selection.tokens_per_frame
    salient = keep - int(keep * pruner.merge_share)
    lengths = segment_lengths(clip.projected.mean(dim=1), pruner.min_segments, pruner.cut_below)
    assert len(lengths) == 8 and lengths[-CHANGING:] == [1] * CHANGING
    assert counts[REPEATED:] == [keep] * CHANGING and sum(counts) == (REPEATED + CHANGING) * keep
    groups = selection.groups.view(REPEATED + CHANGING, PATCHES)
    token_frame = selection.source // PATCHES
    start = 0
    for length in lengths[:-CHANGING]:
        anchors = {start + length - 1 - back for back in range(0, length, pruner.anchor_every)}
        for frame in range(start, start + length):
            if frame not in anchors:
                assert counts[frame] == salient < keep
            joined = groups[frame][groups[frame] >= 0]  # every non-salient candidate, merged within its segment
            assert len(joined) == PATCHES - salient and set(token_frame[joined].tolist()) <= anchors
        assert sum(counts[start : start + length]) == length * keep
        start += length
    assert sum(count == salient for count in counts[:REPEATED]) >= REPEATED // 2


def write_repeating_video(path: Path, repeated: int = 4, changing: int = 4, size: int = 64) -> Path:
    """`repeated` identical frames (a gradient), then `changing` frames of fresh noise; lossless, so that the
    repeated frames decode identical."""
    yy, xx = np.mgrid[0:size, 0:size]
    still = np.stack([xx * 255 // size, yy * 255 // size, np.full((size, size), 128)], axis=-1).astype(np.uint8)
    rng = np.random.default_rng(0)
    frames = [still] * repeated + [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(changing)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"crf": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def hf_video_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny transformers Video-LLaVA: its tower encodes each frame alone, so identical frames give identical
    tokens (the original-format LanguageBind tower attends across frames and adds a per-frame embedding)."""
    from hf_tiny import checkpoint

    return checkpoint("video_llava", tmp_path_factory)


def _answer(capsys: pytest.CaptureFixture[str], model: Path, video: Path, *method: str) -> dict:
    assert main(["answer", "--model", str(model), "--video", str(video), "--question", "What changes?",
                 "--device", "cpu", "--max-new-tokens", "2", "--reduction", "0.5", "--json", *method]) == 0
    return json.loads(capsys.readouterr().out)


def test_end_to_end_the_repeated_frames_get_fewer_tokens(capsys, tmp_path: Path, hf_video_llava: Path) -> None:
    video = write_repeating_video(tmp_path / "repeating.mp4")
    budget = 8 * 18  # 8 frames x L = 18 of the tiny model's 36 patches

    vidcom2 = _answer(capsys, hf_video_llava, video, "--method", "vidcom2")
    counts = vidcom2["tokens_per_frame"]
    assert sum(counts) == vidcom2["visual_tokens"] == budget
    assert len(set(counts[:4])) <= 2 and max(counts) in counts[4:] and sum(counts[:4]) < sum(counts[4:])

    fastvid = _answer(capsys, hf_video_llava, video, "--method", "fastvid", "--method-option", "min_segments=2")
    counts = fastvid["tokens_per_frame"]
    salient = 18 - int(18 * 0.4)
    assert sum(counts) == fastvid["visual_tokens"] <= budget
    assert counts[:3] == [salient] * 3 and counts[3] > 18  # frames 0-3 are one segment, its merged tokens in frame 3
    first_of_frame_3 = sum(counts[:3])
    for frame in range(3):  # their non-salient patches merged into frame 3's tokens
        joined = [group for group in fastvid["merge_groups"][frame] if group >= 0]
        assert len(joined) == 36 - salient
        assert all(first_of_frame_3 <= group < first_of_frame_3 + counts[3] for group in joined)
