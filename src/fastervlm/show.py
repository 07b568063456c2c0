"""Pictures of what a pruning method kept: the sampled frames as the model saw them, the [CLS] attention as a
heatmap, and the pruned patches dimmed.

    from fastervlm.show import render_answer
    frames = pipeline.frames(video="clip.mp4")
    answer = pipeline.answer_frames([frames], [question], pipeline.pruner("fastervlm", reduction=0.9))[0]
    render_answer(pipeline, frames, answer).save("kept.png")

`render_kept_tokens` is the drawing itself, free of any model: arrays in, a PIL image out (the web page calls it
with `Pipeline.display_frames(frames)` and the Answer's `kept_indices` / `cls_scores`). `Layout` fixes every
size, so the place of each frame and patch cell in the picture is known exactly.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastervlm.errors import FasterVLMError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from fastervlm.pipeline import Answer, Frames, Pipeline

DIM = 0.25
"""Brightness factor of a pruned patch."""
HEAT_ALPHA = 0.45
"""Weight of the heatmap colour over the frame."""
COLORMAP = "inferno"


@dataclass(frozen=True)
class Layout:
    """Sizes of the grid picture, in pixels. Each frame is drawn `scale` times its size (nearest neighbour), under
    a label strip; the title strip spans the top."""

    columns: int = 4
    scale: int = 1
    gap: int = 6
    title_height: int = 40
    label_height: int = 18

    def size(self, frames: int, side: int) -> tuple[int, int]:
        """(width, height) of the picture of `frames` frames of `side` x `side` pixels."""
        columns = min(self.columns, frames)
        rows = math.ceil(frames / columns)
        tile = side * self.scale
        return (columns * tile + (columns + 1) * self.gap,
                self.title_height + rows * (self.label_height + tile) + (rows + 1) * self.gap)

    def tile_box(self, index: int, side: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of frame `index`'s image in the picture (its label strip is above it)."""
        row, column = divmod(index, self.columns)
        tile = side * self.scale
        left = self.gap + column * (tile + self.gap)
        top = self.title_height + self.gap + row * (self.label_height + tile + self.gap) + self.label_height
        return left, top, left + tile, top + tile


def render_kept_tokens(
    frames: np.ndarray,
    kept_indices: Sequence[Sequence[int]] | None,
    cls_scores: np.ndarray | torch.Tensor | None,
    grid_side: int,
    title: str = "",
    *,
    labels: Sequence[str] | None = None,
    layout: Layout = Layout(),
    dim: float = DIM,
) -> Image.Image:
    """Draw the frames a model saw in a grid, each with its [CLS]-attention heatmap and its pruned patches dimmed.

    frames: uint8 (T, S, S, 3), the pixels the model saw (`Pipeline.display_frames(frames)`).
    kept_indices: per frame, the kept patch indices in raster order ([CLS] excluded; `Answer.kept_indices`), or
        None to dim nothing.
    cls_scores: (T, N) [CLS] attention per frame (`Answer.cls_scores`), normalised per frame for the colours, or
        None for no heatmap.
    grid_side: patches per side (N = grid_side ** 2; S must be a multiple of it).
    title: text of the top strip, e.g. from `describe_selection`.
    labels: one caption per frame (default "frame t: k kept").
    A patch cell's pixels are (1 - HEAT_ALPHA) x frame + HEAT_ALPHA x colour, times `dim` when it was pruned.
    """
    from PIL import Image, ImageDraw

    frames, kept, scores = _check_inputs(frames, kept_indices, cls_scores, grid_side)
    count, side = frames.shape[0], frames.shape[1]
    if labels is None:
        labels = _default_labels(count, kept)
    if len(labels) != count:
        raise ValueError(f"{count} frames but {len(labels)} labels")
    picture = Image.new("RGB", layout.size(count, side), "white")
    draw = ImageDraw.Draw(picture)
    font = _font(13)
    _draw_title(draw, title, picture.width, layout, _font(15))
    for t in range(count):
        tile = _overlay(frames[t], None if kept is None else kept[t], None if scores is None else scores[t], grid_side, dim)
        if layout.scale > 1:
            tile = tile.repeat(layout.scale, axis=0).repeat(layout.scale, axis=1)
        left, top, _, _ = layout.tile_box(t, side)
        picture.paste(Image.fromarray(tile), (left, top))
        draw.text((left, top - layout.label_height + 2), labels[t], fill="black", font=font)
    return picture


def write_kept_tokens_animation(
    path: str | os.PathLike,
    frames: np.ndarray,
    kept_indices: Sequence[Sequence[int]] | None,
    cls_scores: np.ndarray | torch.Tensor | None,
    grid_side: int,
    title: str = "",
    *,
    fps: float = 2.0,
    labels: Sequence[str] | None = None,
    layout: Layout | None = None,
    dim: float = DIM,
) -> Path:
    """The frames in motion, one picture per sampled frame (as `render_kept_tokens` draws one frame): an animated
    GIF (Pillow, loops) or an H.264 MP4 (PyAV), chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise FasterVLMError(f"cannot write an animation to {path}: use a .gif or .mp4 file name.")
    if fps <= 0:
        raise FasterVLMError(f"--fps must be above 0 (got {fps}).")
    frames, kept, scores = _check_inputs(frames, kept_indices, cls_scores, grid_side)
    count, side = frames.shape[0], frames.shape[1]
    if layout is None:
        layout = Layout(columns=1, scale=max(1, math.ceil(320 / side)))
    if labels is None:
        labels = _default_labels(count, kept)
    pictures = [
        render_kept_tokens(frames[t : t + 1], None if kept is None else kept[t : t + 1],
                           None if scores is None else scores[t : t + 1], grid_side, title,
                           labels=[labels[t]], layout=replace(layout, columns=1), dim=dim)
        for t in range(count)
    ]
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


def _check_inputs(
    frames: np.ndarray, kept_indices: Sequence[Sequence[int]] | None, cls_scores: Any, grid_side: int
) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
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
    scores = None
    if cls_scores is not None:
        scores = cls_scores.detach().float().cpu().numpy() if hasattr(cls_scores, "detach") else np.asarray(cls_scores, dtype=np.float32)
        if scores.shape != (count, patches):
            raise ValueError(f"cls_scores must be ({count}, {patches}), got {scores.shape}")
    return frames, kept, scores


def _default_labels(count: int, kept: list[np.ndarray] | None) -> list[str]:
    return [f"frame {t}" + ("" if kept is None else f": {len(kept[t])} kept") for t in range(count)]


def _overlay(frame: np.ndarray, kept: np.ndarray | None, scores: np.ndarray | None, grid_side: int, dim: float) -> np.ndarray:
    """One frame with its heatmap blended in and the cells outside `kept` dimmed; uint8 (S, S, 3)."""
    cell = frame.shape[0] // grid_side
    image = frame.astype(np.float32)
    if scores is not None:
        import matplotlib

        low, high = float(scores.min()), float(scores.max())
        normalised = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
        colours = matplotlib.colormaps[COLORMAP](normalised.reshape(grid_side, grid_side))[..., :3] * 255.0
        image = (1.0 - HEAT_ALPHA) * image + HEAT_ALPHA * _cells_to_pixels(colours, cell)
    if kept is not None:
        factor = np.full(grid_side * grid_side, dim, dtype=np.float32)
        factor[kept] = 1.0
        image = image * _cells_to_pixels(factor.reshape(grid_side, grid_side, 1), cell)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _cells_to_pixels(cells: np.ndarray, cell: int) -> np.ndarray:
    """(g, g, C) per-patch values -> (g * cell, g * cell, C) constant over each patch."""
    return cells.repeat(cell, axis=0).repeat(cell, axis=1)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw_title(draw: Any, title: str, width: int, layout: Layout, font: Any) -> None:
    """The title on up to two lines that fit the picture's width (a longer title is cut with an ellipsis)."""
    if not title:
        return
    room = width - 2 * layout.gap
    per_line = max(8, int(room / max(draw.textlength("M", font=font) * 0.62, 1.0)))
    lines = textwrap.wrap(title, per_line) or [title]
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), per_line, placeholder=" ...")]
    line_height = max(1, (layout.title_height - 4) // 2)
    for number, line in enumerate(lines):
        draw.text((layout.gap, 2 + number * line_height), line, fill="black", font=font)


# ----- from an Answer -------------------------------------------------------------------------------------------
def showable_methods() -> list[str]:
    """Methods whose choice `show` can draw: those that select patches before the LLM (not merge them, as pool
    does), as each method declares."""
    from fastervlm.methods import list_methods

    return [name for name, cls in list_methods().items() if cls.stage == "vision" and cls.selects_patches]


def check_showable(method: str) -> None:
    """A clear error for methods that do not pick patches per frame before the LLM (FastV prunes inside it)."""
    from fastervlm.methods import list_methods

    cls = list_methods().get(method)
    if cls is not None and cls.stage != "vision":
        raise FasterVLMError(
            f"method {method!r} prunes inside the LLM, after every patch has reached it, so there are no kept "
            f"patches to draw; `show` draws methods that select patches before the LLM: {', '.join(showable_methods())}."
        )


def describe_selection(answer: Answer, frames: int, num_patches: int) -> str:
    """The picture's title: method and settings, budget (L per frame and in total), visual tokens the LLM got."""
    settings = answer.method
    options = [f"{k}={v}" for k, v in settings.items() if k != "method" and v not in (None, False)]
    total = frames * num_patches
    kept = [len(k) for k in answer.kept_indices or []]
    if not kept:
        budget = f"{answer.visual_tokens} total"
    elif len(set(kept)) == 1:
        budget = f"L={kept[0]}/frame, {sum(kept)} total"
    else:
        budget = f"L={min(kept)}..{max(kept)}/frame, {sum(kept)} total"
    return (f"{settings.get('method', '?')} ({', '.join(options) or 'no budget'}) | {budget} | "
            f"{answer.visual_tokens} of {total} visual tokens ({100 * answer.visual_tokens / total:.1f}%)")


def render_answer(
    pipeline: Pipeline,
    frames: Frames,
    answer: Answer,
    *,
    cls_scores: torch.Tensor | None = None,
    title: str | None = None,
    layout: Layout = Layout(),
) -> Image.Image:
    """The picture for one answered sample. The heatmap shows `cls_scores`, default `answer.cls_scores` (None for
    methods that do not compute them: pass `heatmap_scores(pipeline, frames)`)."""
    grid_side, frame_images = _prepare(pipeline, frames, answer)
    scores = answer.cls_scores if cls_scores is None else cls_scores
    return render_kept_tokens(frame_images, answer.kept_indices, scores, grid_side,
                              describe_selection(answer, pipeline.num_frames, pipeline.num_patches) if title is None else title,
                              labels=_labels(frames, answer), layout=layout)


def write_answer_animation(
    path: str | os.PathLike,
    pipeline: Pipeline,
    frames: Frames,
    answer: Answer,
    *,
    cls_scores: torch.Tensor | None = None,
    fps: float = 2.0,
) -> Path:
    """`render_answer`'s frames in motion (.gif or .mp4)."""
    grid_side, frame_images = _prepare(pipeline, frames, answer)
    scores = answer.cls_scores if cls_scores is None else cls_scores
    return write_kept_tokens_animation(path, frame_images, answer.kept_indices, scores, grid_side,
                                       describe_selection(answer, pipeline.num_frames, pipeline.num_patches),
                                       fps=fps, labels=_labels(frames, answer))


def heatmap_scores(pipeline: Pipeline, frames: Frames) -> torch.Tensor:
    """Per-candidate scores (T, N) for a method that computed none (random, none, divprune; a ranking by received
    attention): the [CLS] attention, or on an encoder without [CLS] (LLaVA-OneVision's SigLIP) the attention each
    patch receives. One pass of the vision encoder, no LLM."""
    import torch

    from fastervlm import engine
    from fastervlm.methods.base import CLS_SCORES, RECEIVED_SCORES

    adapter = pipeline.adapter
    score = CLS_SCORES if adapter.stream.has_cls else RECEIVED_SCORES
    with torch.inference_mode():
        pixels = frames.pixels[None].to(device=adapter.device, dtype=adapter.dtype)
        (encoded,) = engine.encode(adapter.stream, pixels, frozenset({score}))
    return getattr(encoded.video, score).float().cpu()


def _prepare(pipeline: Pipeline, frames: Frames, answer: Answer) -> tuple[int, np.ndarray]:
    method = answer.method.get("method", "?")
    check_showable(method)
    if answer.kept_indices is None:
        raise FasterVLMError(
            f"method {method!r} merges patches instead of selecting them, so no patch is kept or pruned; `show` "
            f"draws methods that select patches before the LLM: {', '.join(showable_methods())}."
        )
    grid_side = math.isqrt(pipeline.num_patches)
    if grid_side * grid_side != pipeline.num_patches:
        raise FasterVLMError(f"{pipeline.num_patches} patches per frame do not form a square grid; show cannot place them.")
    return grid_side, pipeline.display_frames(frames)


def _labels(frames: Frames, answer: Answer) -> list[str]:
    sources = frames.frame_indices or list(range(len(answer.kept_indices or [])))
    return [f"frame {source}: {len(kept)} kept" for source, kept in zip(sources, answer.kept_indices or [])]
