"""Where everything goes in a `show` picture, and its header: the title and the legend, laid out in whole phrases.

The picture is a header strip (title, then legend), then a grid of frames: each frame under its label strip,
and, when [CLS] scores are drawn, its heatmap panel right below it. `Layout` fixes every size, so the place of
each frame and patch cell in the picture is known exactly. Header lines break between phrases, never inside one
(a phrase wider than the picture is shortened with an ellipsis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

TITLE_FONT = 15
LEGEND_FONT = 13
TITLE_LINE = 19
"""Pixels per title line."""
LEGEND_LINE = 17
"""Pixels per legend line (a swatch is 12 px high)."""
HEADER_PAD = 4
SEPARATOR = "  |  "
"""Between title phrases on one line."""
ITEM_GAP = 16
"""Pixels between legend items on one line."""
SWATCH = 12
COLOUR_BAR = 64
"""Width of the colour bar in the legend."""

Swatch = Literal["kept", "merged", "pruned", "bar"]


@dataclass(frozen=True)
class LegendItem:
    """One legend entry: a swatch (a kept cell, a merged one, a pruned one) and its text, the heatmap's colour bar
    (drawn as "low [bar] high", its text unused), or text alone (wrapped at words when wider than the picture)."""

    text: str
    swatch: Swatch | None = None


@dataclass(frozen=True)
class Header:
    """The title as phrases (each kept whole on one line) and the legend."""

    title: tuple[str, ...] = ()
    legend: tuple[LegendItem, ...] = ()

    @staticmethod
    def of(title: str | Sequence[str], legend: Sequence[LegendItem] = ()) -> Header:
        """A title given as one string is split into phrases at " | "."""
        phrases = [p.strip() for p in title.split("|")] if isinstance(title, str) else [str(p) for p in title]
        return Header(tuple(p for p in phrases if p), tuple(legend))


@dataclass(frozen=True)
class Layout:
    """Sizes of the grid picture, in pixels. Each frame is drawn `scale` times its size (nearest neighbour) under a
    label strip; with a heatmap, its heatmap panel follows `heat_gap` pixels below; the header strip
    (`title_height`: title and legend) spans the top. `fit_header` makes the strip as tall as its text needs."""

    columns: int = 4
    scale: int = 1
    gap: int = 6
    title_height: int = 40
    label_height: int = 18
    heat_gap: int = 4

    def size(self, frames: int, side: int, heatmap: bool = False) -> tuple[int, int]:
        """(width, height) of the picture of `frames` frames of `side` x `side` pixels."""
        columns = min(self.columns, frames)
        rows = math.ceil(frames / columns)
        return (columns * side * self.scale + (columns + 1) * self.gap,
                self.title_height + rows * self._row_height(side, heatmap) + (rows + 1) * self.gap)

    def tile_box(self, index: int, side: int, heatmap: bool = False) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of frame `index`'s image in the picture (its label strip is above it)."""
        row, column = divmod(index, self.columns)
        tile = side * self.scale
        left = self.gap + column * (tile + self.gap)
        top = self.title_height + self.gap + row * (self._row_height(side, heatmap) + self.gap) + self.label_height
        return left, top, left + tile, top + tile

    def heatmap_box(self, index: int, side: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of frame `index`'s heatmap panel, right below its image."""
        left, top, right, bottom = self.tile_box(index, side, heatmap=True)
        shift = bottom - top + self.heat_gap
        return left, top + shift, right, bottom + shift

    def _row_height(self, side: int, heatmap: bool) -> int:
        tile = side * self.scale
        return self.label_height + tile + (self.heat_gap + tile if heatmap else 0)

    def fit_header(self, header: Header, frames: int, side: int) -> Layout:
        """This layout with a header strip exactly as tall as `header` needs at the picture's width."""
        width = self.size(frames, side)[0] - 2 * self.gap
        title, legend = header_lines(header, width)
        return replace(self, title_height=HEADER_PAD + len(title) * TITLE_LINE + len(legend) * LEGEND_LINE)


def font(size: int) -> Any:
    """Pillow's default font at `size` (the fixed bitmap font where Pillow has no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_width(text: str, size: int) -> float:
    return font(size).getlength(text)


def item_width(item: LegendItem) -> float:
    """Pixels a legend item takes: swatch, text, and for the heatmap "low [bar] high"."""
    if item.swatch == "bar":
        return _text_width("low ", LEGEND_FONT) + COLOUR_BAR + _text_width(" high", LEGEND_FONT)
    return _text_width(item.text, LEGEND_FONT) + (SWATCH + 5 if item.swatch else 0)


def _pack(widths: Sequence[float], room: float, spacing: float) -> list[list[int]]:
    """Greedy lines of item indices that fit `room` pixels with `spacing` between items (one item per line at least)."""
    lines: list[list[int]] = []
    used = 0.0
    for index, width in enumerate(widths):
        if lines and used + spacing + width <= room:
            lines[-1].append(index)
            used += spacing + width
        else:
            lines.append([index])
            used = width
    return lines


def header_lines(header: Header, width: float) -> tuple[list[str], list[list[LegendItem]]]:
    """The title's lines (whole phrases joined by " | "; a phrase too wide is shortened) and the legend's lines."""
    phrases = [shorten(p, width, TITLE_FONT) for p in header.title]
    title_lines = _pack([_text_width(p, TITLE_FONT) for p in phrases], width, _text_width(SEPARATOR, TITLE_FONT))
    items = [piece for item in header.legend for piece in _wrap(item, width)]
    legend_lines = _pack([item_width(i) for i in items], width, ITEM_GAP)
    return ([SEPARATOR.join(phrases[i] for i in line) for line in title_lines],
            [[items[i] for i in line] for line in legend_lines])


def _wrap(item: LegendItem, width: float) -> list[LegendItem]:
    """A text-only item wider than `width`, as items of whole words that each fit (others as they are)."""
    if item.swatch is not None or item_width(item) <= width:
        return [item]
    pieces: list[str] = []
    for word in item.text.split():
        if pieces and _text_width(f"{pieces[-1]} {word}", LEGEND_FONT) <= width:
            pieces[-1] = f"{pieces[-1]} {word}"
        else:
            pieces.append(word)
    return [LegendItem(piece) for piece in pieces]


def shorten(text: str, width: float, size: int) -> str:
    """`text`, cut at a word with an ellipsis if it is wider than `width` pixels."""
    if _text_width(text, size) <= width:
        return text
    words = text.split()
    while len(words) > 1 and _text_width(" ".join(words) + " …", size) > width:
        words.pop()
    return " ".join(words) + " …"


@dataclass(frozen=True)
class Placed:
    """One piece of the header at its place: text of `size` pixels with its top-left at (x, y), or a swatch (a
    legend cell, or the colour bar) with its top-left there."""

    x: float
    y: float
    text: str = ""
    size: int = LEGEND_FONT
    swatch: Swatch | None = None


def place_header(header: Header, left: float, width: float, height: float) -> list[Placed]:
    """Where each piece of the header goes: the title lines, then the legend lines, within `height` pixels from
    the top; lines that do not fit are left out and an ellipsis says so (`Layout.fit_header` sizes the strip so
    that all fit). The PNG and the vector pictures both draw from this."""
    title, legend = header_lines(header, width)
    lines: list[tuple[int, str | list[LegendItem]]] = [(TITLE_LINE, t) for t in title] + [(LEGEND_LINE, i) for i in legend]
    placed: list[Placed] = []
    y = HEADER_PAD // 2
    for line_height, line in lines:
        if y + line_height > height:
            placed.append(Placed(left + width - _text_width("…", TITLE_FONT), max(0, y - line_height), "…", TITLE_FONT))
            break
        placed += [Placed(left, y, line, TITLE_FONT)] if isinstance(line, str) else _place_legend_line(line, left, y)
        y += line_height
    return placed


def _place_legend_line(items: list[LegendItem], left: float, y: float) -> list[Placed]:
    placed: list[Placed] = []
    x = left
    for item in items:
        if item.swatch == "bar":
            bar_left = x + _text_width("low ", LEGEND_FONT)
            placed += [Placed(x, y, "low "), Placed(bar_left, y + 2, swatch="bar"),
                       Placed(bar_left + COLOUR_BAR, y, " high")]
        else:
            if item.swatch is not None:
                placed.append(Placed(x, y + 1, swatch=item.swatch))
            placed.append(Placed(x + (SWATCH + 5 if item.swatch else 0), y, item.text))
        x += item_width(item) + ITEM_GAP
    return placed
