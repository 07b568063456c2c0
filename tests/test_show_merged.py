"""Merged groups: `Answer.merge_groups` holds, per patch, the visual token it was merged into (global over the
answer), matching the method's selection; `--json` carries it; `show` tints and outlines each merged token's
patches in one colour, the same colour in every frame the token spans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastervlm import engine
from fastervlm.cli import main
from fastervlm.methods.base import Selection
from fastervlm.models.base import GenerationSettings
from fastervlm.prompts import KeptTokens
from fastervlm.show import Layout, answer_header, render_answer, render_kept_tokens
from fastervlm.show.panels import GROUP_TINT, group_colours, outline_width


def _visionzip(pipeline, frames):  # noqa: ANN001, ANN202
    pruner = pipeline.pruner("visionzip", reduction=0.75)
    answer = pipeline.run([frames], ["q"], pruner, GenerationSettings(max_new_tokens=1))[0]
    return pruner, answer


def test_answer_merge_groups_are_the_selection_s_tokens(tiny_pipeline, synthetic_video) -> None:
    frames = tiny_pipeline.frames(video=synthetic_video)
    pruner, answer = _visionzip(tiny_pipeline, frames)
    (selection,) = engine.select([tiny_pipeline.encode(frames, [pruner])], pruner)
    assert answer.merge_groups is not None and len(answer.merge_groups) == tiny_pipeline.num_frames
    start = 0
    for t, (groups, kept, count) in enumerate(zip(answer.merge_groups, answer.kept_indices, answer.tokens_per_frame)):
        own = selection.groups.view(tiny_pipeline.num_frames, -1)[t]
        merged = len(set(own.tolist()) - {-1})
        assert count == len(kept) + merged  # 14 dominant patches + 2 contextual tokens per frame
        first = start + len(kept)  # the frame's merged tokens come after its kept patches
        assert groups == own.tolist()
        assert {p for p, g in enumerate(groups) if g < 0} == set(kept)  # every other patch went into a token
        assert set(groups) - {-1} == set(range(first, start + count))
        start += count
    assert start == answer.visual_tokens
    fastervlm = tiny_pipeline.run([frames], ["q"], tiny_pipeline.pruner("fastervlm", reduction=0.75),
                                  GenerationSettings(max_new_tokens=1))[0]
    assert fastervlm.merge_groups is None  # nothing merged


def test_token_numbers_count_a_fed_cls_token() -> None:
    """With [CLS] fed in front of each frame, a frame's merged tokens still come last in its tokens."""
    # frame 0: patch 1 kept, tokens 1 and 2 merged (from patches 0, 3 and 2); frame 1: patches 0 and 3 kept, token 5
    # merged from patches 1 and 2
    source = torch.tensor([1, 0, 2, 4, 7, 5])
    merged = torch.tensor([False, True, True, False, False, True])
    groups = torch.tensor([1, -1, 2, 1, -1, 5, 5, -1])
    selection = Selection(torch.zeros(6, 2), source, 2, 4, merged=merged, groups=groups)
    with_cls = KeptTokens([torch.zeros(4, 2), torch.zeros(4, 2)], selection)  # [CLS] + 3 tokens per frame
    assert with_cls.merge_groups == [[2, -1, 3, 2], [-1, 7, 7, -1]]
    without = KeptTokens([torch.zeros(3, 2), torch.zeros(3, 2)], selection)
    assert without.merge_groups == [[1, -1, 2, 1], [-1, 5, 5, -1]]
    assert KeptTokens([torch.zeros(1, 2)], Selection(torch.zeros(1, 2), torch.tensor([0]), 1, 1)).merge_groups is None


def test_answer_json_carries_merge_groups(capsys, tiny_checkpoint, tiny_pipeline, synthetic_video) -> None:
    code = main(["answer", "--model", str(tiny_checkpoint), "--video", str(synthetic_video), "--question", "q",
                 "--device", "cpu", "--max-new-tokens", "1", "--method", "visionzip", "--reduction", "0.75", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    _, answer = _visionzip(tiny_pipeline, tiny_pipeline.frames(video=synthetic_video))
    assert result["merge_groups"] == answer.merge_groups
    code = main(["answer", "--model", str(tiny_checkpoint), "--video", str(synthetic_video), "--question", "q",
                 "--device", "cpu", "--max-new-tokens", "1", "--reduction", "0.75", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["merge_groups"] is None


def _cells(tile: np.ndarray, grid: int) -> np.ndarray:
    """(grid * grid, cell, cell, 3) pixels of each patch cell."""
    cell = tile.shape[0] // grid
    return tile.reshape(grid, cell, grid, cell, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, cell, cell, 3)


def test_show_draws_every_merged_token(tmp_path, tiny_checkpoint, tiny_pipeline, synthetic_video) -> None:
    out = tmp_path / "visionzip.png"
    assert main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--method", "visionzip", "--reduction", "0.75", "--scale", "1", "--out", str(out)]) == 0
    frames = tiny_pipeline.frames(video=synthetic_video)
    _, answer = _visionzip(tiny_pipeline, frames)
    with Image.open(out) as picture:
        drawn = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(render_answer(tiny_pipeline, frames, answer, layout=Layout(scale=1))))
    header = answer_header(tiny_pipeline, answer, heatmap=True)
    assert [item.swatch for item in header.legend][:2] == ["kept", "merged"]  # no patch is pruned: no such swatch
    assert "L=16/frame (14 kept + 2 merged), 128 total" in header.title
    side, grid = frames.pixels.shape[-1], math.isqrt(tiny_pipeline.num_patches)
    layout = Layout(scale=1).fit_header(header, tiny_pipeline.num_frames, side)
    colours = group_colours([np.asarray(g) for g in answer.merge_groups])
    assert len(colours) == 16 and len(set(colours.values())) == 8  # 16 tokens, the palette's 8 colours in turn
    seen = tiny_pipeline.display_frames(frames)
    width = outline_width(side // grid)
    for t, groups in enumerate(answer.merge_groups):
        left, top, right, bottom = layout.tile_box(t, side, heatmap=True)
        cells, source = _cells(drawn[top:bottom, left:right], grid), _cells(seen[t], grid)
        for token in set(groups) - {-1}:
            members = [p for p, g in enumerate(groups) if g == token]
            colour = np.asarray(colours[token], dtype=np.float32)
            tinted = np.rint((1 - GROUP_TINT) * source[members].astype(np.float32) + GROUP_TINT * colour)
            inner = (slice(None), slice(width, -width), slice(width, -width))
            np.testing.assert_array_equal(cells[members][inner], tinted[inner])  # every member tinted alike
            outlined = [p for p in members if np.all(cells[p] == colours[token], axis=-1).any()]
            assert outlined, f"token {token}'s patches must be outlined in its colour"


def test_a_token_spanning_frames_keeps_one_colour() -> None:
    frames = np.full((2, 24, 24, 3), 128, dtype=np.uint8)
    groups = [[3] * 4 + [5] * 4 + [-1] * 8, [-1] * 8 + [5] * 8]  # token 3 in the first frame, token 5 in both
    kept = [list(range(8, 16)), list(range(8))]
    layout = Layout(columns=2)
    picture = np.asarray(render_kept_tokens(frames, kept, None, 4, merge_groups=groups, layout=layout))
    tints = []
    for t, token_cells in ((0, range(4)), (0, range(4, 8)), (1, range(8, 16))):
        left, top, right, bottom = layout.tile_box(t, 24)
        cells = _cells(picture[top:bottom, left:right].astype(np.float32), 4)
        tints.append({tuple(cells[p, 3, 3]) for p in token_cells})  # inside the outline
    assert all(len(tint) == 1 for tint in tints)
    assert tints[1] == tints[2] != tints[0]  # token 5: one colour in both frames; token 3 another
    with pytest.raises(ValueError, match="merge_groups"):
        render_kept_tokens(frames, kept, None, 4, merge_groups=[[0] * 16])
