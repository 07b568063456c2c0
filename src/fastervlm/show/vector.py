"""SVG and PDF pictures for papers (matplotlib): the picture `render_kept_tokens` draws, every piece at the same
place, with the frames and heatmaps as embedded images (drawn without smoothing) and the outlines, text and
swatches as vectors, plus a colour bar with ticks under the grid, labelled with what the score is.

In an SVG, each frame and heatmap is an `<image>` (at the PNG's pixels, so that no viewer smooths the patch
cells) and the colour bar is the group with id `colorbar`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import numpy as np

from fastervlm.errors import FasterVLMError
from fastervlm.show.layout import Header, Layout, place_header
from fastervlm.show.panels import (COLORMAP, OUTLINE, cells_to_pixels, kept_mask, normalised, outline_width,
                                   shaded_frame, swatch_pixels)
from fastervlm.show.render import Drawing, PictureOptions, picture_parts

if TYPE_CHECKING:
    import torch

VECTOR_SUFFIXES = (".svg", ".pdf")
DPI = 100
"""One pixel of the PNG's layout is 1/100 inch."""
FONT_SCALE = 0.8
"""matplotlib's DejaVu Sans runs about a fifth wider than Pillow's default font, whose widths break the header's
lines: at 0.8 of the pixel sizes every line fits where the PNG's does."""
COLOUR_BAR_STRIP = 60
"""Pixels under the grid for the colour bar, its ticks and its label."""
COLOUR_BAR_ID = "colorbar"
EDITABLE_TEXT = {"svg.fonttype": "none", "pdf.fonttype": 42}
"""Text stays text: <text> elements in the SVG, embedded TrueType in the PDF (as journals ask), not outlines."""


def write_kept_tokens_figure(
    path: str | os.PathLike,
    frames: np.ndarray,
    kept_indices: Sequence[Sequence[int]] | None,
    cls_scores: np.ndarray | torch.Tensor | None,
    grid_side: int,
    title: str | Sequence[str] = "",
    **options: Unpack[PictureOptions],
) -> Path:
    """`render_kept_tokens`' picture (the same arguments) as an SVG or a PDF, chosen by the suffix of `path`."""
    import matplotlib

    path = Path(path)
    if path.suffix.lower() not in VECTOR_SUFFIXES:
        raise FasterVLMError(f"cannot write a vector picture to {path}: use a .svg or .pdf file name.")
    figure = _figure(*picture_parts(frames, kept_indices, cls_scores, grid_side, title, options))
    with matplotlib.rc_context(EDITABLE_TEXT):
        figure.savefig(path, format=path.suffix.lower()[1:], metadata={"Creator": "fastervlm show"})
    return path


def _figure(drawing: Drawing, header: Header, labels: list[str], layout: Layout) -> Any:
    """A matplotlib Figure whose one full-size axes uses the PNG's pixel coordinates (y downwards)."""
    from matplotlib.figure import Figure

    heatmap = drawing.scores is not None
    width, height = layout.size(drawing.count, drawing.side, heatmap)
    total = height + (COLOUR_BAR_STRIP if heatmap else 0)
    figure = Figure(figsize=(width / DPI, total / DPI), dpi=DPI)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    _draw_header(ax, header, layout.gap, width - 2 * layout.gap, layout.title_height)
    image = None
    for t in range(drawing.count):
        left, top, right, bottom = layout.tile_box(t, drawing.side, heatmap)
        marks = drawing.marks(t)
        frame = shaded_frame(drawing.frames[t], marks["kept"], drawing.grid_side, marks["groups"], drawing.colours)
        ax.imshow(cells_to_pixels(frame, layout.scale), extent=(left, right, bottom, top), interpolation="none")
        _draw_marks(ax, marks, drawing.grid_side, (left, top, right, bottom))
        if heatmap:
            box = layout.heatmap_box(t, drawing.side)
            cells = normalised(drawing.scores[t]).reshape(drawing.grid_side, drawing.grid_side)
            cells = cells_to_pixels(cells, (box[2] - box[0]) // drawing.grid_side)
            image = ax.imshow(cells, cmap=COLORMAP, vmin=0.0, vmax=1.0, extent=(box[0], box[2], box[3], box[1]),
                              interpolation="none")
            _draw_marks(ax, {**marks, "groups": None}, drawing.grid_side, box)  # as the PNG: kept only
        ax.text(left, top - layout.label_height + 2, labels[t], va="top", fontsize=_points(13))
    ax.set_xlim(0, width)
    ax.set_ylim(total, 0)
    ax.set_aspect("auto")
    if image is not None:
        _colour_bar(figure, image, drawing.score_name, (layout.gap, height, width - 2 * layout.gap, total))
    return figure


def _points(pixels: float) -> float:
    """A font size in points for text about `pixels` high in the PNG."""
    return FONT_SCALE * pixels * 72 / DPI


def _draw_header(ax: Any, header: Header, left: int, width: int, height: int) -> None:
    for piece in place_header(header, left, width, height):
        if piece.swatch is None:
            ax.text(piece.x, piece.y, piece.text, va="top", fontsize=_points(piece.size))
            continue
        pixels = swatch_pixels(piece.swatch)
        ax.imshow(pixels, extent=(piece.x, piece.x + pixels.shape[1], piece.y + pixels.shape[0], piece.y),
                  interpolation="none")


def _draw_marks(ax: Any, marks: dict[str, Any], grid_side: int, box: tuple[int, int, int, int]) -> None:
    """Outlines as vector lines inside each region's border cells: kept regions in OUTLINE, each merged token's
    patches in its colour."""
    regions = []
    if marks["kept"] is not None:
        regions.append((kept_mask(marks["kept"], grid_side), OUTLINE))
    if marks["groups"] is not None:
        groups = marks["groups"].reshape(grid_side, grid_side)
        regions += [(groups == token, marks["colours"][int(token)]) for token in np.unique(groups[groups >= 0])]
    for mask, colour in regions:
        _outline(ax, mask, colour, box)


def _outline(ax: Any, mask: np.ndarray, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> None:
    """The region's border as vector lines half a line width inside its border cells (as the PNG's outlines lie),
    each straight run one line with square caps, so that runs meet cleanly at corners."""
    from matplotlib.collections import LineCollection

    left, top, right, _ = box
    cell = (right - left) / mask.shape[0]
    width = outline_width(int(cell))
    segments = [_run_ends(run, left, top, cell, width / 2) for run in border_runs(mask)]
    if segments:
        ax.add_collection(LineCollection(segments, colors=[np.asarray(colour) / 255.0],
                                         linewidths=width * 72 / DPI, capstyle="projecting"))


def border_runs(mask: np.ndarray) -> list[tuple[str, int, int, int, int]]:
    """The sides of masked cells that face an unmasked cell or the edge, joined into straight runs:
    (axis "h" or "v", grid line, first cell, end cell, +1 when the region lies after the line, -1 before it)."""
    padded = np.pad(mask, 1, constant_values=False)
    sides: dict[tuple[str, int, int], list[int]] = {}
    for row, column in zip(*np.nonzero(mask)):
        for axis, line, along, inward, outside in (("h", row, column, 1, padded[row, column + 1]),
                                                   ("h", row + 1, column, -1, padded[row + 2, column + 1]),
                                                   ("v", column, row, 1, padded[row + 1, column]),
                                                   ("v", column + 1, row, -1, padded[row + 1, column + 2])):
            if not outside:
                sides.setdefault((axis, line, inward), []).append(along)
    runs = []
    for (axis, line, inward), cells in sides.items():
        cells.sort()
        start = cells[0]
        for previous, current in zip(cells, [*cells[1:], None]):
            if current != previous + 1:
                runs.append((axis, line, start, previous + 1, inward))
                start = current
    return runs


def _run_ends(run: tuple[str, int, int, int, int], left: float, top: float, cell: float,
              inset: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """A run's two end points in picture pixels, moved `inset` into the region and in from its ends (the square
    caps reach them again)."""
    axis, line, first, end, inward = run
    across = line * cell + inward * inset
    ends = (first * cell + inset, end * cell - inset)
    if axis == "h":
        return (left + ends[0], top + across), (left + ends[1], top + across)
    return (left + across, top + ends[0]), (left + across, top + ends[1])


def _colour_bar(figure: Any, image: Any, score_name: str, strip: tuple[int, int, int, int]) -> None:
    """A horizontal colour bar in the strip under the grid (left, top, right edge's width, bottom in pixels)."""
    left, top, width, bottom = strip
    total_width, total_height = figure.get_size_inches() * DPI
    bar_width = min(width, 360)
    rect = (left / total_width, 1 - (top + 14) / total_height, bar_width / total_width, 10 / total_height)
    cax = figure.add_axes(rect)
    cax.set_gid(COLOUR_BAR_ID)
    bar = figure.colorbar(image, cax=cax, orientation="horizontal", ticks=[0.0, 0.5, 1.0], format="%g")
    bar.ax.tick_params(labelsize=_points(11), length=3)
    bar.ax.set_xlabel(f"{score_name}, rescaled per frame: 0 = the frame's lowest score, 1 = its highest",
                      fontsize=_points(12), loc="left")
