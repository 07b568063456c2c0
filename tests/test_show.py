"""`fastervlm show`: the grid's exact size, dimmed cells = pruned indices, per-frame heatmaps, animations, errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from fastervlm.cli import main
from fastervlm.show import DIM, Layout, render_kept_tokens, write_kept_tokens_animation

FRAMES, SIDE, GRID = 5, 24, 4  # 6 x 6 pixel cells
CELL = SIDE // GRID


def _cells(picture: Image.Image, layout: Layout, frame: int, side: int = SIDE, grid: int = GRID) -> np.ndarray:
    """Mean RGB of every patch cell of one frame in the picture: (grid * grid, 3)."""
    left, top, right, bottom = layout.tile_box(frame, side)
    tile = np.asarray(picture, dtype=np.float64)[top:bottom, left:right]
    cell = (right - left) // grid
    return tile.reshape(grid, cell, grid, cell, 3).mean(axis=(1, 3)).reshape(grid * grid, 3)


def _kept(seed: int = 0, frames: int = FRAMES) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(GRID * GRID, size=int(rng.integers(0, GRID * GRID + 1)), replace=False).tolist())
            for _ in range(frames)]


def test_picture_size_follows_the_layout_exactly() -> None:
    layout = Layout(columns=2, scale=3, gap=5, title_height=30, label_height=12)
    frames = np.zeros((FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    picture = render_kept_tokens(frames, _kept(), None, GRID, "title")
    assert picture.size == (4 * SIDE + 5 * 6, 40 + 2 * (18 + SIDE) + 3 * 6)  # default layout: 4 columns, 2 rows
    picture = render_kept_tokens(frames, _kept(), None, GRID, "title", layout=layout)
    tile = SIDE * 3
    assert picture.size == (2 * tile + 3 * 5, 30 + 3 * (12 + tile) + 4 * 5)  # 5 frames in 2 columns: 3 rows


@pytest.mark.parametrize("scale", [1, 2])
def test_dimmed_cells_are_exactly_the_pruned_indices(scale: int) -> None:
    layout = Layout(columns=3, scale=scale)
    shades = np.arange(FRAMES) * 20 + 120
    frames = np.broadcast_to(shades[:, None, None, None], (FRAMES, SIDE, SIDE, 3)).astype(np.uint8)
    kept = _kept(seed=scale)
    picture = render_kept_tokens(frames, kept, None, GRID, layout=layout)
    for t in range(FRAMES):
        cells = _cells(picture, layout, t)
        assert np.all(cells == cells[:, :1])  # grey stays grey: nothing but dimming without a heatmap
        dimmed = {i for i in range(GRID * GRID) if cells[i, 0] == round(shades[t] * DIM)}
        bright = {i for i in range(GRID * GRID) if cells[i, 0] == shades[t]}
        assert bright == set(kept[t])
        assert dimmed == set(range(GRID * GRID)) - set(kept[t])


def test_with_a_heatmap_the_pruned_cells_are_the_dimmed_ones() -> None:
    layout = Layout(columns=FRAMES)
    rng = np.random.default_rng(1)
    frames = rng.integers(60, 256, size=(FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    scores = torch.rand(FRAMES, GRID * GRID, generator=torch.Generator().manual_seed(0))
    kept = _kept(seed=3)
    undimmed = render_kept_tokens(frames, None, scores, GRID, layout=layout)
    dimmed = render_kept_tokens(frames, kept, scores, GRID, layout=layout)
    for t in range(FRAMES):
        ratio = _cells(dimmed, layout, t).sum(1) / _cells(undimmed, layout, t).sum(1)
        assert set(np.flatnonzero(np.abs(ratio - DIM) < 0.02)) == set(range(GRID * GRID)) - set(kept[t])
        assert set(np.flatnonzero(ratio == 1.0)) == set(kept[t])


def test_heatmap_is_normalised_per_frame_and_follows_the_scores() -> None:
    frames = np.full((2, SIDE, SIDE, 3), 128, dtype=np.uint8)
    scores = torch.linspace(0, 1, GRID * GRID)
    picture = render_kept_tokens(frames, None, torch.stack([scores, 10 * scores + 3]), GRID, layout=Layout(columns=2))
    first, second = _cells(picture, Layout(columns=2), 0), _cells(picture, Layout(columns=2), 1)
    np.testing.assert_array_equal(first, second)  # the same ranking in both frames: the same colours
    brightness = first.sum(1)
    assert brightness[-1] > brightness[0]  # inferno: high score -> bright


def test_bad_inputs_are_refused() -> None:
    frames = np.zeros((2, SIDE, SIDE, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="multiple"):
        render_kept_tokens(frames, None, None, 5)
    with pytest.raises(ValueError, match="kept indices"):
        render_kept_tokens(frames, [[0], [GRID * GRID]], None, GRID)
    with pytest.raises(ValueError, match="cls_scores"):
        render_kept_tokens(frames, None, np.zeros((2, 3)), GRID)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_animation_has_one_picture_per_frame(tmp_path, suffix: str) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    path = write_kept_tokens_animation(tmp_path / f"kept{suffix}", frames, _kept(), None, GRID, "t", fps=4)
    if suffix == ".gif":
        with Image.open(path) as gif:
            assert gif.n_frames == FRAMES
            assert gif.size == Layout(columns=1, scale=-(-320 // SIDE)).size(1, SIDE)
    else:
        with av.open(str(path)) as video:
            assert sum(1 for _ in video.decode(video=0)) == FRAMES


def test_show_command_draws_what_the_model_kept(tmp_path, tiny_checkpoint, tiny_pipeline, synthetic_video) -> None:
    from fastervlm.models.base import GenerationSettings
    from fastervlm.show import render_answer

    out, gif = tmp_path / "kept.png", tmp_path / "kept.gif"
    code = main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--reduction", "0.75", "--out", str(out), "--animation", str(gif), "--scale", "1"])
    assert code == 0
    frames = tiny_pipeline.frames(video=synthetic_video)
    answer = tiny_pipeline.answer_frames([frames], ["q"], tiny_pipeline.pruner("fastervlm", reduction=0.75),
                                         GenerationSettings(max_new_tokens=1))[0]
    side, grid = frames.pixels.shape[-1], int(tiny_pipeline.num_patches**0.5)
    with Image.open(out) as picture:
        assert picture.size == Layout(scale=1).size(tiny_pipeline.num_frames, side)
        drawn = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(render_answer(tiny_pipeline, frames, answer, layout=Layout(scale=1))))
    undimmed = render_kept_tokens(tiny_pipeline.display_frames(frames), None, answer.cls_scores, grid,
                                  "", layout=Layout(scale=1))
    for t, kept in enumerate(answer.kept_indices):
        assert len(kept) == 16
        ratio = (_cells(Image.fromarray(drawn), Layout(scale=1), t, side, grid).sum(1) + 1) / (
            _cells(undimmed, Layout(scale=1), t, side, grid).sum(1) + 1)
        assert set(np.flatnonzero(ratio > 0.9)) == set(kept)
    with Image.open(gif) as animation:
        assert animation.n_frames == tiny_pipeline.num_frames


@pytest.mark.parametrize(("method", "message"), [("fastv", "prunes inside the LLM"), ("pool", "merges patches")])
def test_show_refuses_methods_without_kept_patches(tmp_path, tiny_checkpoint, synthetic_video, capsys, method, message) -> None:
    code = main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--method", method, "--reduction", "0.75", "--out", str(tmp_path / "x.png")])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "fastervlm" in error
    assert not (tmp_path / "x.png").exists()
