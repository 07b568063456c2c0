"""The drawing itself, free of any model: frames, kept indices, merged groups and scores in, a PIL image (or an
animation) out. The web page and `render_answer` call it with `Pipeline.display_frames(frames)` and an Answer's
`kept_indices` / `merge_groups` / `cls_scores`; `vector.py` draws the same picture as SVG or PDF."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np

from fastervlm.errors import FasterVLMError
from fastervlm.show.layout import Header, Layout, LegendItem, font
from fastervlm.show.panels import draw_header, frame_panel, group_colours, heatmap_panel

if TYPE_CHECKING:
    import torch
    from PIL import Image

CLS_ATTENTION = "[CLS] attention"
RECEIVED_ATTENTION = "received attention"
"""What a heatmap can show: the [CLS] query's attention, or the attention each patch receives (no [CLS])."""
MARKS = {"kept": LegendItem("kept patch (outlined)", "kept"),
         "merged": LegendItem("merged patches (one colour per token)", "merged"),
         "pruned": LegendItem("pruned patch (muted)", "pruned")}
ANIMATION_WIDTH = 320
"""An animation's frames are scaled to at least this many pixels wide."""


def heat_legend(score_name: str) -> list[LegendItem]:
    """The heatmap's legend entries: what the score is, then the colour bar."""
    return [LegendItem(f"{score_name} (panel below each frame), per frame:"), LegendItem("", "bar")]


def mark_kinds(kept: Sequence[Sequence[int]] | None, groups: Sequence[Sequence[int]] | None,
               patches: int) -> list[str]:
    """The marks a picture shows ("kept", "merged", "pruned"): none when nothing is marked."""
    if kept is None and groups is None:
        return []
    frames = len(kept if kept is not None else groups)
    merged = [{p for p, token in enumerate(groups[t]) if token >= 0} if groups is not None else set()
              for t in range(frames)]
    chosen = [set(kept[t]) if kept is not None else set() for t in range(frames)]
    pruned = any(len(chosen[t] | merged[t]) < patches for t in range(frames))
    return [kind for kind, shown in (("kept", kept is not None), ("merged", any(merged)), ("pruned", pruned)) if shown]


def header_for(title: str | Sequence[str], *, marks: Sequence[str], score_name: str | None,
               notes: Sequence[str] = ()) -> Header:
    """The title and a legend of what is drawn: the marks, the heatmap of `score_name` (None: no heatmap), then
    `notes`."""
    legend = [MARKS[kind] for kind in marks] + (heat_legend(score_name) if score_name else [])
    return Header.of(title, [*legend, *(LegendItem(note) for note in notes)])


@dataclass(frozen=True)
class Drawing:
    """Checked inputs of a picture: uint8 (T, S, S, 3) frames, kept indices per frame or None, (T, N) scores or
    None, patches per side, per frame the merged token of each patch (-1: none) or None, what the scores are, and
    each merged token's colour (the same in every frame)."""

    frames: np.ndarray
    kept: list[np.ndarray] | None
    scores: np.ndarray | None
    grid_side: int
    groups: list[np.ndarray] | None = None
    score_name: str = CLS_ATTENTION
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.frames.shape[0]

    @property
    def side(self) -> int:
        return self.frames.shape[1]

    def header(self, title: str | Sequence[str], notes: Sequence[str]) -> Header:
        marks = mark_kinds(self.kept, self.groups, self.grid_side**2)
        return header_for(title, marks=marks, score_name=self.score_name if self.scores is not None else None,
                          notes=notes)

    def labels(self, given: Sequence[str] | None) -> list[str]:
        """`given` checked against the frames, or "frame t: n kept" for each."""
        if given is None:
            return [f"frame {t}" + ("" if self.kept is None else f": {len(self.kept[t])} kept") for t in range(self.count)]
        if len(given) != self.count:
            raise ValueError(f"{self.count} frames but {len(given)} labels")
        return list(given)

    def marks(self, t: int) -> dict[str, Any]:
        """Frame t's marks, as the panels take them."""
        return {"kept": None if self.kept is None else self.kept[t],
                "groups": None if self.groups is None else self.groups[t], "colours": self.colours}

    def one(self, t: int) -> Drawing:
        """Frame t alone (merged tokens keep the whole picture's colours)."""
        def pick(values: Any) -> Any:
            return None if values is None else values[t : t + 1]

        return replace(self, frames=self.frames[t : t + 1], kept=pick(self.kept), scores=pick(self.scores),
                       groups=pick(self.groups))


class PictureOptions(TypedDict, total=False):
    """The keyword options of a grid picture (`render_kept_tokens`, `vector.write_kept_tokens_figure`)."""

    labels: Sequence[str] | None
    layout: Layout
    notes: Sequence[str]
    merge_groups: Sequence[Sequence[int]] | None
    score_name: str


def picture_parts(frames: np.ndarray, kept_indices: Sequence[Sequence[int]] | None, cls_scores: Any, grid_side: int,
                  title: str | Sequence[str], options: PictureOptions) -> tuple[Drawing, Header, list[str], Layout]:
    """The checked drawing, its header, its labels and its layout, from a picture's arguments."""
    unknown = set(options) - set(PictureOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown picture options: {', '.join(sorted(unknown))}")
    drawing = make_drawing(frames, kept_indices, cls_scores, grid_side, merge_groups=options.get("merge_groups"),
                           score_name=options.get("score_name", CLS_ATTENTION))
    return (drawing, drawing.header(title, options.get("notes", ())), drawing.labels(options.get("labels")),
            options.get("layout", Layout()))


def render_kept_tokens(
    frames: np.ndarray,
    kept_indices: Sequence[Sequence[int]] | None,
    cls_scores: np.ndarray | torch.Tensor | None,
    grid_side: int,
    title: str | Sequence[str] = "",
    **options: Unpack[PictureOptions],
) -> Image.Image:
    """Draw the frames a model saw in a grid: each frame as it is, kept patches outlined, merged ones tinted and
    outlined in their token's colour, pruned ones muted, and under it (when `cls_scores` are given) its score
    heatmap panel; a header with the title and a legend.

    frames: uint8 (T, S, S, 3), the pixels the model saw (`Pipeline.display_frames(frames)`).
    kept_indices: per frame, the kept patch indices in raster order ([CLS] excluded; `Answer.kept_indices`), or
        None to mark no patch kept (a method that merges patches).
    cls_scores: (T, N) scores per frame (`Answer.cls_scores`), normalised per frame for the colours, or None for
        no heatmap panels.
    grid_side: patches per side (N = grid_side ** 2; S must be a multiple of it).
    title: phrases (or one string with " | " between them), each kept whole on one line of the header.
    options (`PictureOptions`): `labels` per frame (default "frame t: n kept"); `layout` (default `Layout()`);
        `notes`, more legend entries, e.g. what a merging method's tokens are; `merge_groups`, per frame and patch
        the visual token it was merged into or -1 (`Answer.merge_groups`); `score_name`, what the scores are
        (CLS_ATTENTION, the default, or RECEIVED_ATTENTION).
    The picture has exactly `layout.size(T, S, heatmap=cls_scores is not None)`; use `layout.fit_header(...)` for
    a header strip as tall as its text (`render_answer` does).
    """
    return _render(*picture_parts(frames, kept_indices, cls_scores, grid_side, title, options))


def _render(drawing: Drawing, header: Header, labels: list[str], layout: Layout) -> Image.Image:
    """The PNG picture of `drawing`."""
    from PIL import Image, ImageDraw

    heatmap = drawing.scores is not None
    picture = Image.new("RGB", layout.size(drawing.count, drawing.side, heatmap), "white")
    draw_header(picture, header, layout.gap, picture.width - 2 * layout.gap, layout.title_height)
    draw = ImageDraw.Draw(picture)
    for t in range(drawing.count):
        left, top, right, _ = layout.tile_box(t, drawing.side, heatmap)
        panel = frame_panel(drawing.frames[t], grid_side=drawing.grid_side, scale=layout.scale, **drawing.marks(t))
        picture.paste(Image.fromarray(panel), (left, top))
        if heatmap:
            panel = heatmap_panel(drawing.scores[t], drawing.marks(t)["kept"], drawing.grid_side, right - left)
            picture.paste(Image.fromarray(panel), layout.heatmap_box(t, drawing.side)[:2])
        draw.text((left, top - layout.label_height + 2), labels[t], fill="black", font=font(13))
    return picture


def write_kept_tokens_animation(
    path: str | os.PathLike,
    frames: np.ndarray,
    kept_indices: Sequence[Sequence[int]] | None,
    cls_scores: np.ndarray | torch.Tensor | None,
    grid_side: int,
    title: str | Sequence[str] = "",
    *,
    fps: float = 2.0,
    **options: Unpack[PictureOptions],
) -> Path:
    """The frames in motion, one picture per sampled frame (as `render_kept_tokens` draws one frame, with the same
    options; by default at least ANIMATION_WIDTH pixels wide, the header as tall as its text): an animated GIF
    (Pillow, loops) or an H.264 MP4 (PyAV), chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise FasterVLMError(f"cannot write an animation to {path}: use a .gif or .mp4 file name.")
    if fps <= 0:
        raise FasterVLMError(f"--fps must be above 0 (got {fps}).")
    given = options.pop("layout", None)
    drawing, header, labels, _ = picture_parts(frames, kept_indices, cls_scores, grid_side, title, options)
    layout = replace(given or Layout(scale=max(1, math.ceil(ANIMATION_WIDTH / drawing.side))), columns=1)
    layout = layout.fit_header(header, 1, drawing.side)
    pictures = [_render(drawing.one(t), header, [labels[t]], layout) for t in range(drawing.count)]
    if suffix == ".gif":
        pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0)
    else:
        _write_mp4(path, pictures, fps)
    return path


def _write_mp4(path: Path, pictures: list[Image.Image], fps: float) -> None:
    """H.264 yuv420p (even sizes: padded with white) at `fps`, playable in browsers."""
    from fractions import Fraction

    import av

    width, height = pictures[0].width + pictures[0].width % 2, pictures[0].height + pictures[0].height % 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for picture in pictures:
            canvas = np.full((height, width, 3), 255, dtype=np.uint8)
            canvas[: picture.height, : picture.width] = np.asarray(picture)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
        container.mux(stream.encode())


def make_drawing(frames: np.ndarray, kept_indices: Sequence[Sequence[int]] | None, cls_scores: Any, grid_side: int,
                 *, merge_groups: Sequence[Sequence[int]] | None = None, score_name: str = CLS_ATTENTION) -> Drawing:
    """The picture's inputs, checked (a ValueError names what is wrong)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, S, S, 3), got {frames.dtype} {frames.shape}")
    count, side = frames.shape[:2]
    if grid_side < 1 or side % grid_side:
        raise ValueError(f"the frame side {side} is not a multiple of the patch grid side {grid_side}")
    patches = grid_side * grid_side
    kept = None
    if kept_indices is not None:
        if len(kept_indices) != count:
            raise ValueError(f"{count} frames but kept indices for {len(kept_indices)}")
        kept = [np.asarray(list(k), dtype=np.int64) for k in kept_indices]
        if any(k.size and (k.min() < 0 or k.max() >= patches) for k in kept):
            raise ValueError(f"kept indices must lie in 0..{patches - 1}")
    groups = None
    if merge_groups is not None:
        groups = [np.asarray(list(g), dtype=np.int64) for g in merge_groups]
        if len(groups) != count or any(g.shape != (patches,) or g.min(initial=0) < -1 for g in groups):
            raise ValueError(f"merge_groups must give {count} frames x {patches} patches of token indices or -1")
    scores = None
    if cls_scores is not None:
        scores = cls_scores.detach().float().cpu().numpy() if hasattr(cls_scores, "detach") else np.asarray(cls_scores, dtype=np.float32)
        if scores.shape != (count, patches):
            raise ValueError(f"cls_scores must be ({count}, {patches}), got {scores.shape}")
    return Drawing(frames, kept, scores, grid_side, groups, score_name, group_colours(groups))
