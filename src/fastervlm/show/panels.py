"""The pixels of a `show` picture: a frame with its kept patches outlined and its pruned ones greyed, the [CLS]
heatmap panel, and the header (title, legend with swatches and the colour bar).

A frame panel shows the frame as it is where patches were kept (each kept region outlined in OUTLINE, on the
inside of its border cells) and a light grey veil over the luminance of pruned patches, so both stay readable at
any budget. The heatmap panel is the [CLS] attention alone, one colour per patch, normalised per frame, with the
same outlines, so low-score kept patches are as visible as high-score ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastervlm.show.layout import (COLOUR_BAR, HEADER_PAD, ITEM_GAP, LEGEND_FONT, LEGEND_LINE, SWATCH, TITLE_FONT,
                                   TITLE_LINE, Header, LegendItem, font, header_lines, item_width)

OUTLINE = (0, 190, 255)
"""Colour of the outline of kept patches."""
VEIL_GREY = 220.0
VEIL = 0.5
"""A pruned patch's pixels: (1 - VEIL) x its luminance + VEIL x VEIL_GREY (light grey, the shapes still visible)."""
COLORMAP = "inferno"
"""Heatmap colours: dark for the lowest score of the frame, light yellow for the highest."""
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def cells_to_pixels(cells: np.ndarray, cell: int) -> np.ndarray:
    """(g, g, ...) per-patch values -> (g * cell, g * cell, ...) constant over each patch."""
    return cells.repeat(cell, axis=0).repeat(cell, axis=1)


def kept_mask(kept: np.ndarray, grid_side: int) -> np.ndarray:
    """(g, g) bool, True at the kept patches."""
    mask = np.zeros(grid_side * grid_side, dtype=bool)
    mask[kept] = True
    return mask.reshape(grid_side, grid_side)


def veiled(pixels: np.ndarray) -> np.ndarray:
    """How a pruned patch's pixels (float, (..., 3)) are drawn: light grey over their luminance."""
    luminance = pixels @ LUMA
    return np.repeat(((1.0 - VEIL) * luminance + VEIL * VEIL_GREY)[..., None], 3, axis=-1)


def outline_width(cell_pixels: int) -> int:
    """Outline thickness for patch cells of `cell_pixels` pixels: thin, but at least one pixel."""
    return max(1, cell_pixels // 10)


def draw_outline(tile: np.ndarray, mask: np.ndarray) -> None:
    """Paint OUTLINE (in place) on the pixels of kept cells within the outline width of the kept region's border
    (a pruned neighbour or the frame's edge): the outline lies inside kept cells, pruned ones stay untouched."""
    inside = cells_to_pixels(mask, tile.shape[0] // mask.shape[0])
    interior = _erode(inside, outline_width(tile.shape[0] // mask.shape[0]))
    tile[inside & ~interior] = OUTLINE


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` whose square neighbourhood of radius `width` lies in `mask` (outside the image counts as
    out); done along each axis in turn, which is the same as the square."""
    for axis in (0, 1):
        padded = np.pad(mask, [(width, width) if a == axis else (0, 0) for a in (0, 1)], constant_values=False)
        length = mask.shape[axis]
        shifted = [np.take(padded, np.arange(offset, offset + length), axis=axis) for offset in range(2 * width + 1)]
        mask = np.logical_and.reduce(shifted)
    return mask


def frame_panel(frame: np.ndarray, kept: np.ndarray | None, grid_side: int, scale: int) -> np.ndarray:
    """uint8 (S * scale, S * scale, 3): the frame, pruned patches veiled, kept regions outlined."""
    tile = frame
    mask = None
    if kept is not None:
        mask = kept_mask(kept, grid_side)
        pixels = frame.astype(np.float32)
        inside = cells_to_pixels(mask, frame.shape[0] // grid_side)[..., None]
        tile = np.clip(np.rint(np.where(inside, pixels, veiled(pixels))), 0, 255).astype(np.uint8)
    tile = cells_to_pixels(tile, scale) if scale > 1 else tile.copy()
    if mask is not None:
        draw_outline(tile, mask)
    return tile


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB of the colormap, shape values.shape + (3,)."""
    import matplotlib

    return np.rint(matplotlib.colormaps[COLORMAP](values)[..., :3] * 255.0).astype(np.uint8)


def heatmap_panel(scores: np.ndarray, kept: np.ndarray | None, grid_side: int, tile_side: int) -> np.ndarray:
    """uint8 (tile_side, tile_side, 3): each patch in the colour of its score, normalised over the frame, with the
    kept regions outlined as on the frame."""
    low, high = float(scores.min()), float(scores.max())
    normalised = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    tile = cells_to_pixels(heat_colours(normalised.reshape(grid_side, grid_side)), tile_side // grid_side)
    if kept is not None:
        draw_outline(tile, kept_mask(kept, grid_side))
    return tile


def draw_header(picture: Any, header: Header, left: int, width: int, height: int) -> None:
    """The title lines, then the legend lines, within `height` pixels from the top; lines that do not fit are left
    out and an ellipsis says so (`Layout.fit_header` sizes the strip so that all fit)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    title, legend = header_lines(header, width)
    lines: list[tuple[int, str | list[LegendItem]]] = [(TITLE_LINE, t) for t in title] + [(LEGEND_LINE, i) for i in legend]
    y = HEADER_PAD // 2
    for line_height, line in lines:
        if y + line_height > height:
            ellipsis = font(TITLE_FONT)
            draw.text((left + width - ellipsis.getlength("…"), max(0, y - line_height)), "…", fill="black", font=ellipsis)
            return
        if isinstance(line, str):
            draw.text((left, y), line, fill="black", font=font(TITLE_FONT))
        else:
            _draw_legend_line(picture, draw, line, left, y)
        y += line_height


def _draw_legend_line(picture: Any, draw: Any, items: list[LegendItem], left: int, y: int) -> None:
    text_font = font(LEGEND_FONT)
    x = float(left)
    for item in items:
        if item.swatch == "bar":
            draw.text((x, y), "low ", fill="black", font=text_font)
            bar_left = x + text_font.getlength("low ")
            picture.paste(_colour_bar(), (round(bar_left), y + 2))
            draw.text((bar_left + COLOUR_BAR, y), " high", fill="black", font=text_font)
        else:
            if item.swatch is not None:
                picture.paste(_swatch(item.swatch), (round(x), y + 1))
            draw.text((x + (SWATCH + 5 if item.swatch else 0), y), item.text, fill="black", font=text_font)
        x += item_width(item) + ITEM_GAP


def _colour_bar() -> Any:
    from PIL import Image

    ramp = heat_colours(np.linspace(0.0, 1.0, COLOUR_BAR))
    return Image.fromarray(np.repeat(ramp[None], SWATCH, axis=0))


def _swatch(kind: str) -> Any:
    """A kept cell (mid grey, outlined) or a pruned one (the veil over mid grey), SWATCH pixels square."""
    from PIL import Image

    grey = np.full((SWATCH, SWATCH, 3), 128.0, dtype=np.float32)
    if kind == "pruned":
        return Image.fromarray(np.rint(veiled(grey)).astype(np.uint8))
    cell = grey.astype(np.uint8)
    cell[[0, 1, -2, -1], :] = OUTLINE
    cell[:, [0, 1, -2, -1]] = OUTLINE
    return Image.fromarray(cell)
