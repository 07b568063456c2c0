"""Pictures of an answered sample: what its method kept, titled and explained from the Answer and the registry.

Every vision-stage method can be drawn: one that selects patches gets them outlined (and the rest muted); one that
reports which patches each merged token holds (`Answer.merge_groups`, VisionZip) gets each token's patches tinted
and outlined in one colour; one that merges without saying how (pool) gets its frames unmarked and a legend line
that says its tokens are merged; tokens beyond what is drawn (a kept [CLS]) are counted in the legend. A method
that prunes inside the LLM (FastV) is refused: every patch reached the LLM, so there is no choice per frame to draw.
The picture is PNG (or any Pillow format) or, by the file's suffix, SVG or PDF (`save_answer_picture`).
"""

from __future__ import annotations

from dataclasses import dataclass

import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from fastervlm.errors import FasterVLMError
from fastervlm.show.layout import Header, Layout
from fastervlm.show.render import (CLS_ATTENTION, RECEIVED_ATTENTION, header_for, mark_kinds, render_kept_tokens,
                                   write_kept_tokens_animation)
from fastervlm.show.vector import VECTOR_SUFFIXES, write_kept_tokens_figure

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from fastervlm.pipeline import Answer, Frames, Pipeline


def showable_methods() -> list[str]:
    """Methods whose choice `show` can draw: those that act before the LLM, as each method declares."""
    from fastervlm.methods import list_methods

    return [name for name, cls in list_methods().items() if cls.stage == "vision"]


def check_showable(method: str) -> None:
    """A clear error for a method that prunes inside the LLM (nothing is chosen per frame before it)."""
    from fastervlm.methods import list_methods

    cls = list_methods().get(method)
    if cls is not None and cls.stage != "vision":
        raise FasterVLMError(
            f"method {method!r} prunes inside the LLM, after every patch has reached it, so there are no kept "
            f"patches to draw; `show` draws methods that act before the LLM: {', '.join(showable_methods())}."
        )


def describe_selection(answer: Answer, frames: int, num_patches: int) -> str:
    """The picture's title, phrases between " | ": method and settings, budget (L per frame, of which kept and
    merged, and in total), visual tokens the LLM got."""
    settings = answer.method
    options = [f"{k}={v}" for k, v in settings.items() if k != "method" and v not in (None, False)]
    total = frames * num_patches
    kept = None if answer.kept_indices is None else [len(k) for k in answer.kept_indices]
    merged = merged_per_frame(answer.merge_groups)
    if not kept and merged is None:
        budget = f"{answer.visual_tokens} total"
    else:
        per_frame = [a + b for a, b in zip(kept or [0] * len(merged), merged or [0] * len(kept))]
        split = "" if merged is None else " (merged)" if kept is None else f" ({_span(kept)} kept + {_span(merged)} merged)"
        budget = f"L={_span(per_frame)}/frame{split}, {sum(per_frame)} total"
    return (f"{settings.get('method', '?')} ({', '.join(options) or 'no budget'}) | {budget} | "
            f"{answer.visual_tokens} of {total} visual tokens ({100 * answer.visual_tokens / total:.1f}%)")


def _span(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}..{max(values)}"


def merged_per_frame(groups: list[list[int]] | None) -> list[int] | None:
    """Merged tokens per frame (a token whose patches span frames counts in the first), or None."""
    if groups is None:
        return None
    seen: set[int] = set()
    counts = []
    for frame in groups:
        tokens = {token for token in frame if token >= 0} - seen
        counts.append(len(tokens))
        seen |= tokens
    return counts


def selection_notes(answer: Answer, frames: int) -> list[str]:
    """Legend lines for what the patch marks cannot show: merged tokens without groups, tokens that are not patches."""
    method = answer.method.get("method", "?")
    if answer.kept_indices is None and answer.merge_groups is None:
        per_frame = f", {answer.visual_tokens // frames} per frame" if answer.visual_tokens % frames == 0 else ""
        return [f"{method} merges patches: its {answer.visual_tokens} visual tokens{per_frame} are each made from "
                "several patches, so no patch is marked kept or pruned"]
    merged = merged_per_frame(answer.merge_groups)
    extra = answer.visual_tokens - sum(len(k) for k in answer.kept_indices or []) - sum(merged or [])
    if extra > 0:
        what = "[CLS]" if merged is not None else "merged tokens or [CLS]"
        return [f"+{extra} visual tokens that are not single patches ({what}) are not drawn"]
    return []


def score_name(pipeline: Pipeline, answer: Answer) -> str:
    """What the heatmap shows: the answer's own [CLS] scores, or `heatmap_scores`' ([CLS] attention where the
    encoder has a [CLS] token, else the attention each patch receives)."""
    from fastervlm.methods.base import CLS_SCORES

    has_cls = CLS_SCORES in pipeline.adapter.stream.provides
    return CLS_ATTENTION if answer.cls_scores is not None or has_cls else RECEIVED_ATTENTION


def answer_notes(pipeline: Pipeline, answer: Answer, *, heatmap: bool, borrowed: bool = False) -> list[str]:
    """The legend's text lines for an answer: `selection_notes`, the model when it is a tiny random one, and where
    the heatmap comes from when `borrowed` (another pass over the same frames: the method itself does not compute
    [CLS] scores)."""
    from fastervlm.tiny.identity import RANDOM_NOTE, tiny_label

    notes = selection_notes(answer, answer_geometry(pipeline, answer)[0])
    if answer.grid is not None and answer.grid[0] != answer.grid[1]:
        notes.append(f"each frame is {answer.grid[0]} x {answer.grid[1]} tokens; the cells beyond it are padding")
    if (tiny := tiny_label(pipeline.path)) is not None:  # the picture says when it shows a random model's choices
        notes.append(f"model: {tiny} ({RANDOM_NOTE}, and what it keeps means nothing)")
    if heatmap and borrowed:
        notes.append(f"the heatmap is the encoder's {score_name(pipeline, answer)} on these frames "
                     f"({answer.method.get('method')} does not use it)")
    return notes


def answer_geometry(pipeline: Pipeline, answer: Answer) -> tuple[int, int]:
    """(frames, candidates per frame) of an answer: its own grid where the model picks one per input (Qwen-VL, whose
    frames are temporal patches), else the model's."""
    if answer.grid is None:
        return pipeline.num_frames, pipeline.num_patches
    return len(answer.tokens_per_frame or []), answer.grid[0] * answer.grid[1]


def answer_header(pipeline: Pipeline, answer: Answer, *, heatmap: bool, borrowed: bool = False) -> Header:
    """The header of `render_answer`'s picture: title, legend of what is drawn, notes."""
    frames, patches = answer_geometry(pipeline, answer)
    return header_for(describe_selection(answer, frames, patches),
                      marks=mark_kinds(answer.kept_indices, answer.merge_groups, patches),
                      score_name=score_name(pipeline, answer) if heatmap else None,
                      notes=answer_notes(pipeline, answer, heatmap=heatmap, borrowed=borrowed))


def render_answer(
    pipeline: Pipeline,
    frames: Frames,
    answer: Answer,
    *,
    cls_scores: torch.Tensor | None = None,
    heatmap: bool = True,
    layout: Layout = Layout(),
) -> Image.Image:
    """The picture for one answered sample, its header as tall as its text. The heatmap panels show
    `cls_scores`, default `answer.cls_scores` (None for methods that do not compute them: pass
    `heatmap_scores(pipeline, frames)`); `heatmap=False` leaves them out."""
    return _grid_picture(render_kept_tokens, pipeline, frames, answer, cls_scores, heatmap, layout)


class AnswerDrawing(TypedDict, total=False):
    """`render_answer`'s keyword options: `cls_scores`, `heatmap`, `layout`."""

    cls_scores: torch.Tensor | None
    heatmap: bool
    layout: Layout


def save_answer_picture(path: str | os.PathLike, pipeline: Pipeline, frames: Frames, answer: Answer,
                        **draw: Unpack[AnswerDrawing]) -> Path:
    """`render_answer`'s picture (the same options) written to `path`: SVG or PDF (vector, `show.vector`) by the
    suffix, else a Pillow format (PNG, JPEG, ...)."""
    path = Path(path)
    if path.suffix.lower() not in VECTOR_SUFFIXES:
        render_answer(pipeline, frames, answer, **draw).save(path)
        return path
    return _grid_picture(partial(write_kept_tokens_figure, path), pipeline, frames, answer, draw.get("cls_scores"),
                         draw.get("heatmap", True), draw.get("layout", Layout()))


def _grid_picture(draw: Callable[..., Any], pipeline: Pipeline, frames: Frames, answer: Answer,
                  cls_scores: torch.Tensor | None, heatmap: bool, layout: Layout) -> Any:
    """`draw` (`render_kept_tokens` or `write_kept_tokens_figure`) called with the answer's arrays, its header's
    title, a layout whose header strip fits the header, and `_extras`."""
    drawn = _prepare(pipeline, frames, answer, cls_scores, heatmap)
    header = answer_header(pipeline, answer, heatmap=drawn.scores is not None, borrowed=answer.cls_scores is None)
    layout = layout.fit_header(header, len(drawn.images), drawn.images.shape[1])
    return draw(drawn.images, drawn.kept, drawn.scores, drawn.side, header.title, layout=layout,
                **_extras(pipeline, frames, answer, drawn))


def write_answer_animation(
    path: str | os.PathLike,
    pipeline: Pipeline,
    frames: Frames,
    answer: Answer,
    *,
    cls_scores: torch.Tensor | None = None,
    heatmap: bool = True,
    fps: float = 2.0,
) -> Path:
    """`render_answer`'s frames in motion (.gif or .mp4)."""
    drawn = _prepare(pipeline, frames, answer, cls_scores, heatmap)
    title = describe_selection(answer, *answer_geometry(pipeline, answer))
    return write_kept_tokens_animation(path, drawn.images, drawn.kept, drawn.scores, drawn.side, title, fps=fps,
                                       **_extras(pipeline, frames, answer, drawn))


def heatmap_scores(pipeline: Pipeline, frames: Frames) -> torch.Tensor:
    """Per-candidate scores (T, N) for a method that computed none (random, none, divprune; a ranking by received
    attention): the [CLS] attention, or on an encoder without [CLS] (LLaVA-OneVision's SigLIP) the attention each
    patch receives. One pass of the vision encoder through the engine, no LLM."""
    import torch

    from fastervlm import engine
    from fastervlm.methods.base import CLS_SCORES, RECEIVED_SCORES

    adapter = pipeline.adapter
    score = CLS_SCORES if CLS_SCORES in adapter.stream.provides else RECEIVED_SCORES
    with torch.inference_mode():
        pixels = frames.pixels.to(device=adapter.device, dtype=adapter.dtype)
        (tokens,) = engine.encode(adapter.stream, [pixels], frozenset({score}))
    return getattr(tokens, score).float().cpu()


def _extras(pipeline: Pipeline, frames: Frames, answer: Answer, drawn: _Drawn) -> dict:
    """What every drawing of an answer takes besides the arrays: labels, notes, merged groups, the score's name."""
    return {"labels": _labels(frames, answer, len(drawn.images)), "merge_groups": drawn.groups,
            "score_name": score_name(pipeline, answer),
            "notes": answer_notes(pipeline, answer, heatmap=drawn.scores is not None,
                                  borrowed=answer.cls_scores is None)}


@dataclass
class _Drawn:
    """An answer's arrays as a picture draws them: a square grid of `side` x `side` cells per frame."""

    side: int
    images: np.ndarray
    """The frames as the model saw them, uint8 (T, S, S, 3)."""
    kept: list[list[int]] | None
    groups: list[list[int]] | None
    scores: torch.Tensor | None
    """(T, side * side), or None: no heatmap."""


def _prepare(pipeline: Pipeline, frames: Frames, answer: Answer, cls_scores: torch.Tensor | None,
             heatmap: bool) -> _Drawn:
    """The frames, kept indices, merged groups and scores to draw, on a square grid of cells (`_on_square` for a
    model that picks its grid per input)."""
    check_showable(answer.method.get("method", "?"))
    scores = (answer.cls_scores if cls_scores is None else cls_scores) if heatmap else None
    images = pipeline.display_frames(frames)
    if answer.grid is not None:
        return _on_square(images, answer.grid, answer.kept_indices, answer.merge_groups, scores)
    grid_side = math.isqrt(pipeline.num_patches)
    if grid_side * grid_side != pipeline.num_patches:
        raise FasterVLMError(f"{pipeline.num_patches} patches per frame do not form a square grid; show cannot place them.")
    return _Drawn(grid_side, images, answer.kept_indices, answer.merge_groups, scores)


def _on_square(images: np.ndarray, grid: tuple[int, int], kept: list[list[int]] | None,
               groups: list[list[int]] | None, scores: torch.Tensor | None) -> _Drawn:
    """A frame of rows x cols cells (a model that picks its grid per input) on a square of max(rows, cols) cells:
    the frame at the top left, white beyond it; kept indices, groups and scores renumbered on the square (the extra
    cells are never kept or merged and score the frame's lowest)."""
    import numpy as np

    rows, cols = grid
    side = max(rows, cols)
    cell = images.shape[1] // rows
    square = np.full((len(images), side * cell, side * cell, 3), 255, dtype=np.uint8)
    square[:, : rows * cell, : cols * cell] = images[:, : rows * cell, : cols * cell]
    renumbered = None if kept is None else [[index // cols * side + index % cols for index in frame] for frame in kept]
    if groups is not None:
        padded_groups = [[-1] * (side * side) for _ in groups]
        for frame, own in zip(padded_groups, groups):
            for index, token in enumerate(own):
                frame[index // cols * side + index % cols] = token
        groups = padded_groups
    if scores is not None:
        padded = scores.new_full((len(scores), side, side), 0.0) + scores.min(dim=1).values[:, None, None]
        padded[:, :rows, :cols] = scores.view(-1, rows, cols)
        scores = padded.flatten(1)
    return _Drawn(side, square, renumbered, groups, scores)


def _labels(frames: Frames, answer: Answer, count: int) -> list[str]:
    sources = frames.frame_indices or list(range(frames.pixels.shape[0]))
    sources = sources[:: max(1, len(sources) // count)][:count]  # a temporal patch spans several input frames
    kept = [f"{len(k)} kept" for k in answer.kept_indices] if answer.kept_indices is not None else None
    merged = [f"{m} merged" for m in merged_per_frame(answer.merge_groups) or []] or None
    parts = [[p for p in (k, m) if p] for k, m in zip(kept or [None] * len(sources), merged or [None] * len(sources))]
    return [f"frame {source}" + (": " + ", ".join(part) if part else "") for source, part in zip(sources, parts)]
