"""`fastervlm show`'s drawing, model-free: exact sizes, marked cells = pruned indices, frames drawn as they are,
heatmap panels normalised per frame, headers that break between phrases only, animations, bad inputs."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from fastervlm.show import OUTLINE, Header, Layout, LegendItem, render_kept_tokens, veiled, write_kept_tokens_animation
from fastervlm.show.layout import HEADER_PAD, LEGEND_LINE, SEPARATOR, TITLE_LINE, header_lines
from fastervlm.show.panels import outline_width

FRAMES, SIDE, GRID = 5, 24, 4  # 6 x 6 pixel cells
CELL = SIDE // GRID


def _cell_pixels(picture: Image.Image, box: tuple[int, int, int, int], grid: int = GRID) -> np.ndarray:
    """Every patch cell of one panel: (grid * grid, cell, cell, 3) pixels."""
    left, top, right, bottom = box
    tile = np.asarray(picture.convert("RGB"), dtype=np.float64)[top:bottom, left:right]
    cell = (right - left) // grid
    return tile.reshape(grid, cell, grid, cell, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, cell, cell, 3)


def _interiors(picture: Image.Image, box: tuple[int, int, int, int], grid: int = GRID) -> np.ndarray:
    """Mean RGB of every cell's interior, inside the outline width: (grid * grid, 3)."""
    cells = _cell_pixels(picture, box, grid)
    width = outline_width(cells.shape[1])
    return cells[:, width:-width, width:-width].mean(axis=(1, 2))


def _outlined(picture: Image.Image, box: tuple[int, int, int, int], grid: int = GRID) -> set[int]:
    """The cells holding outline-coloured pixels."""
    cells = _cell_pixels(picture, box, grid)
    return set(np.flatnonzero(np.all(cells == OUTLINE, axis=-1).any(axis=(1, 2))))


def _border_cells(kept: list[int], grid: int = GRID) -> set[int]:
    """Kept cells with a pruned neighbour (diagonal ones too: the outline turns their corner) or on the frame's
    edge: those the outline must mark."""
    inside = set(kept)
    border = set()
    for index in kept:
        row, column = divmod(index, grid)
        neighbours = [(row + dy, column + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        if any(not (0 <= r < grid and 0 <= c < grid) or r * grid + c not in inside for r, c in neighbours):
            border.add(index)
    return border


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
    scores = np.random.default_rng(0).random((FRAMES, GRID * GRID))
    picture = render_kept_tokens(frames, _kept(), scores, GRID, "title", layout=layout)
    assert picture.size == (2 * tile + 3 * 5, 30 + 3 * (12 + tile + 4 + tile) + 4 * 5)  # a heatmap panel per frame


@pytest.mark.parametrize("scale", [1, 2])
def test_marked_cells_are_exactly_the_pruned_indices(scale: int) -> None:
    layout = Layout(columns=3, scale=scale)
    shades = np.arange(FRAMES) * 20 + 120
    frames = np.broadcast_to(shades[:, None, None, None], (FRAMES, SIDE, SIDE, 3)).astype(np.uint8)
    kept = _kept(seed=scale)
    picture = render_kept_tokens(frames, kept, None, GRID, layout=layout)
    for t in range(FRAMES):
        cells = _interiors(picture, layout.tile_box(t, SIDE))
        grey = np.rint(veiled(np.full(3, shades[t], dtype=np.float32)))[0]
        assert np.all(cells == cells[:, :1])  # grey stays grey: the veil is grey too
        assert {i for i in range(GRID * GRID) if cells[i, 0] == shades[t]} == set(kept[t])  # as it is
        assert {i for i in range(GRID * GRID) if cells[i, 0] == grey} == set(range(GRID * GRID)) - set(kept[t])
        assert _outlined(picture, layout.tile_box(t, SIDE)) == _border_cells(kept[t])


def test_with_a_heatmap_the_frames_are_drawn_as_they_are() -> None:
    layout = Layout(columns=FRAMES, scale=2)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    scores = torch.rand(FRAMES, GRID * GRID, generator=torch.Generator().manual_seed(0))
    kept = _kept(seed=3)
    with_heat = render_kept_tokens(frames, kept, scores, GRID, layout=layout)
    without = render_kept_tokens(frames, kept, None, GRID, layout=layout)
    for t in range(FRAMES):
        drawn = _cell_pixels(with_heat, layout.tile_box(t, SIDE, heatmap=True))
        np.testing.assert_array_equal(drawn, _cell_pixels(without, layout.tile_box(t, SIDE)))  # no tint
        source = frames[t].repeat(2, 0).repeat(2, 1).astype(np.float64)
        original = source.reshape(GRID, 2 * CELL, GRID, 2 * CELL, 3).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, 2 * CELL, 2 * CELL, 3)
        width = outline_width(2 * CELL)
        for index in range(GRID * GRID):
            inner = drawn[index, width:-width, width:-width]
            expected = original[index, width:-width, width:-width]
            if index not in kept[t]:
                expected = np.rint(veiled(expected.astype(np.float32)))
            np.testing.assert_array_equal(inner, expected)


def test_heatmap_panels_are_normalised_per_frame_and_follow_the_scores() -> None:
    layout = Layout(columns=2)
    frames = np.full((2, SIDE, SIDE, 3), 128, dtype=np.uint8)
    scores = torch.linspace(0, 1, GRID * GRID)
    picture = render_kept_tokens(frames, None, torch.stack([scores, 10 * scores + 3]), GRID, layout=layout)
    first, second = (_interiors(picture, layout.heatmap_box(t, SIDE)) for t in (0, 1))
    np.testing.assert_array_equal(first, second)  # the same ranking in both frames: the same colours
    brightness = first.sum(1)
    assert np.all(np.diff(brightness) > 0)  # inferno: a higher score is brighter
    assert _outlined(picture, layout.heatmap_box(0, SIDE)) == set()  # nothing kept or pruned: no outline
    kept = [[0, 15], [5]]
    picture = render_kept_tokens(frames, kept, torch.stack([scores, scores]), GRID, layout=layout)
    assert _outlined(picture, layout.heatmap_box(1, SIDE)) == {5}  # the kept patches, outlined on the heatmap too


@pytest.mark.parametrize("width", [120, 200, 330, 500, 900])
def test_header_lines_break_between_phrases_only(width: int) -> None:
    phrases = ("fastervlm (reduction=0.9)", "L=26/frame, 208 total", "208 of 2048 visual tokens (10.2%)")
    legend = (LegendItem("kept patch (outlined)", "kept"), LegendItem("pruned patch (greyed)", "pruned"),
              LegendItem("a long note that says what the patch marks cannot show, wrapped at words " * 2))
    title, lines = header_lines(Header(phrases, legend), width)
    drawn = [phrase for line in title for phrase in line.split(SEPARATOR)]
    assert len(drawn) == len(phrases)
    for shown, phrase in zip(drawn, phrases):
        assert shown == phrase or (shown.endswith(" …") and phrase.startswith(shown[:-2]))
    words = " ".join(item.text for line in lines for item in line if item.swatch is None).split()
    assert words == legend[2].text.split()  # the note, wrapped at words, nothing lost
    layout = Layout(columns=1).fit_header(Header(phrases, legend), 1, width)  # room: exactly the frame's width
    assert layout.title_height == HEADER_PAD + len(title) * TITLE_LINE + len(lines) * LEGEND_LINE


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
