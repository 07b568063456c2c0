"""The pixels of a `show` picture: a frame with its kept patches outlined, its merged ones tinted by group and its
pruned ones muted, the score heatmap panel, and the header (title, legend with swatches and the colour bar).

A frame panel shows the frame as it is where patches were kept (each kept region outlined in OUTLINE, on the
inside of its border cells). Patches merged into one visual token (VisionZip's contextual tokens) share a tint
and an outline in that token's colour (GROUP_COLOURS), in every frame where the token has patches. Pruned
patches keep their shapes and some of their colour, muted and lightened (`veiled`), so that they stay readable
at 90% reduction while the kept ones stand out. The heatmap panel is the score alone, one colour per patch,
normalised per frame, with the same outlines, so low-score kept patches are as visible as high-score ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastervlm.show.layout import COLOUR_BAR, SWATCH, Header, font, place_header

OUTLINE = (0, 190, 255)
"""Colour of the outline of kept patches."""
VEIL_GREY = 235.0
VEIL = 0.35
VEIL_SATURATION = 0.5
"""A pruned patch's pixels: its colour with VEIL_SATURATION of its saturation left, then (1 - VEIL) of that plus
VEIL x VEIL_GREY: 65% of the contrast stays, and the hue enough to tell shapes of equal brightness apart."""
GROUP_COLOURS = ((255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (227, 119, 194), (140, 86, 75),
                 (188, 189, 34), (31, 60, 140))
"""Merged tokens' colours, one per token in the order of the tokens (repeating after eight): none is the kept
patches' OUTLINE."""
GROUP_TINT = 0.3
"""A merged patch's pixels: (1 - GROUP_TINT) x its own + GROUP_TINT x its token's colour."""
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
    """How a pruned patch's pixels (float, (..., 3)) are drawn: muted (less saturated) and lightened."""
    luminance = (pixels @ LUMA)[..., None]
    muted = luminance + VEIL_SATURATION * (pixels - luminance)
    return (1.0 - VEIL) * muted + VEIL * VEIL_GREY


def group_colours(groups: Sequence[np.ndarray] | None) -> dict[int, tuple[int, int, int]]:
    """token -> colour for every merged token among `groups` (per frame, per patch: token or -1), by rank."""
    tokens = sorted({int(token) for frame in groups or () for token in np.unique(frame) if token >= 0})
    return {token: GROUP_COLOURS[rank % len(GROUP_COLOURS)] for rank, token in enumerate(tokens)}


def outline_width(cell_pixels: int) -> int:
    """Outline thickness for patch cells of `cell_pixels` pixels: thin, but at least one pixel."""
    return max(1, cell_pixels // 10)


def draw_outline(tile: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = OUTLINE) -> None:
    """Paint `colour` (in place) on the pixels of the mask's cells within the outline width of its region's border
    (a cell outside it or the frame's edge): the outline lies inside the region, the cells outside stay untouched."""
    inside = cells_to_pixels(mask, tile.shape[0] // mask.shape[0])
    interior = _erode(inside, outline_width(tile.shape[0] // mask.shape[0]))
    tile[inside & ~interior] = colour


def draw_groups(tile: np.ndarray, groups: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> None:
    """Outline (in place) each merged token's patches of this frame in the token's colour."""
    grid_side = math.isqrt(groups.size)
    for token in np.unique(groups[groups >= 0]):
        draw_outline(tile, (groups == token).reshape(grid_side, grid_side), colours[int(token)])


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` whose square neighbourhood of radius `width` lies in `mask` (outside the image counts as
    out); done along each axis in turn, which is the same as the square."""
    for axis in (0, 1):
        padded = np.pad(mask, [(width, width) if a == axis else (0, 0) for a in (0, 1)], constant_values=False)
        length = mask.shape[axis]
        shifted = [np.take(padded, np.arange(offset, offset + length), axis=axis) for offset in range(2 * width + 1)]
        mask = np.logical_and.reduce(shifted)
    return mask


def shaded_frame(frame: np.ndarray, kept: np.ndarray | None, grid_side: int, groups: np.ndarray | None = None,
                 colours: dict[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """uint8 (S, S, 3): the frame with its pruned patches veiled and its merged ones tinted, no outlines (None
    for both `kept` and `groups`: the frame as it is, nothing marked)."""
    if kept is None and groups is None:
        return frame
    pixels = frame.astype(np.float32)
    cell = frame.shape[0] // grid_side
    keep = kept_mask(kept if kept is not None else np.zeros(0, dtype=np.int64), grid_side)
    shaded = np.where(cells_to_pixels(keep, cell)[..., None], pixels, veiled(pixels))
    if groups is not None:
        tint = np.zeros((groups.size, 3), dtype=np.float32)
        for token in np.unique(groups[groups >= 0]):
            tint[groups == token] = colours[int(token)]
        merged = cells_to_pixels((groups >= 0).reshape(grid_side, grid_side), cell)[..., None]
        tinted = (1.0 - GROUP_TINT) * pixels + GROUP_TINT * cells_to_pixels(tint.reshape(grid_side, grid_side, 3), cell)
        shaded = np.where(merged, tinted, shaded)
    return np.clip(np.rint(shaded), 0, 255).astype(np.uint8)


def draw_marks(tile: np.ndarray, kept: np.ndarray | None, grid_side: int, groups: np.ndarray | None,
               colours: dict[int, tuple[int, int, int]] | None) -> None:
    """The kept regions' outlines and the merged tokens' outlines, in place."""
    if kept is not None:
        draw_outline(tile, kept_mask(kept, grid_side))
    if groups is not None:
        draw_groups(tile, groups, colours)


def frame_panel(frame: np.ndarray, kept: np.ndarray | None, grid_side: int, scale: int,
                groups: np.ndarray | None = None, colours: dict[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """uint8 (S * scale, S * scale, 3): the frame, pruned patches veiled, merged ones tinted, all regions outlined."""
    tile = shaded_frame(frame, kept, grid_side, groups, colours)
    tile = cells_to_pixels(tile, scale) if scale > 1 else tile.copy()
    draw_marks(tile, kept, grid_side, groups, colours)
    return tile


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB of the colormap, shape values.shape + (3,)."""
    import matplotlib

    return np.rint(matplotlib.colormaps[COLORMAP](values)[..., :3] * 255.0).astype(np.uint8)


def normalised(scores: np.ndarray) -> np.ndarray:
    """A frame's scores rescaled to [0, 1]: its lowest to 0, its highest to 1 (all 0 when they are equal)."""
    low, high = float(scores.min()), float(scores.max())
    return (scores - low) / (high - low) if high > low else np.zeros_like(scores)


def heatmap_panel(scores: np.ndarray, kept: np.ndarray | None, grid_side: int, tile_side: int) -> np.ndarray:
    """uint8 (tile_side, tile_side, 3): each patch in the colour of its score, normalised over the frame, with the
    kept regions outlined as on the frame (merged tokens are drawn on the frame only, so that the scores stay
    readable)."""
    tile = cells_to_pixels(heat_colours(normalised(scores).reshape(grid_side, grid_side)), tile_side // grid_side)
    if kept is not None:
        draw_outline(tile, kept_mask(kept, grid_side))
    return tile


def draw_header(picture: Any, header: Header, left: int, width: int, height: int) -> None:
    """The header's pieces (`place_header`) drawn on the picture."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(picture)
    for piece in place_header(header, left, width, height):
        if piece.swatch is not None:
            picture.paste(Image.fromarray(swatch_pixels(piece.swatch)), (round(piece.x), round(piece.y)))
        else:
            draw.text((piece.x, piece.y), piece.text, fill="black", font=font(piece.size))


def swatch_pixels(kind: str) -> np.ndarray:
    """uint8 pixels of a legend swatch, SWATCH pixels square: a kept cell (mid grey, outlined), a merged one
    (tinted and outlined in the first token colour), a pruned one (the veil over mid grey); or the colour bar,
    COLOUR_BAR pixels wide."""
    if kind == "bar":
        return np.repeat(heat_colours(np.linspace(0.0, 1.0, COLOUR_BAR))[None], SWATCH, axis=0)
    grey = np.full((SWATCH, SWATCH, 3), 128.0, dtype=np.float32)
    if kind == "pruned":
        return np.rint(veiled(grey)).astype(np.uint8)
    colour = GROUP_COLOURS[0] if kind == "merged" else OUTLINE
    if kind == "merged":
        grey = (1.0 - GROUP_TINT) * grey + GROUP_TINT * np.asarray(colour, dtype=np.float32)
    cell = np.rint(grey).astype(np.uint8)
    cell[[0, 1, -2, -1], :] = colour
    cell[:, [0, 1, -2, -1]] = colour
    return cell
