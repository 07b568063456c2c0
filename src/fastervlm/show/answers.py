"""Pictures of an answered sample: what its method kept, titled and explained from the Answer and the registry.

Every vision-stage method can be drawn: one that selects patches gets them outlined (and the rest greyed); one
that merges patches (pool) gets its frames unmarked and a legend line that says its tokens are merged; tokens
beyond the drawn patches (merged ones, a kept [CLS]) are counted in the legend. A method that prunes inside the
LLM (FastV) is refused: every patch reached the LLM, so there is no choice per frame to draw.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastervlm.errors import FasterVLMError
from fastervlm.show.layout import Header, Layout
from fastervlm.show.render import header_for, render_kept_tokens, write_kept_tokens_animation

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
    """The picture's title, phrases between " | ": method and settings, budget (L per frame and in total), visual
    tokens the LLM got."""
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


def selection_notes(answer: Answer, frames: int) -> list[str]:
    """Legend lines for what the patch marks cannot show: merged tokens, tokens that are not patches."""
    method = answer.method.get("method", "?")
    if answer.kept_indices is None:
        per_frame = f", {answer.visual_tokens // frames} per frame" if answer.visual_tokens % frames == 0 else ""
        return [f"{method} merges patches: its {answer.visual_tokens} visual tokens{per_frame} are each made from "
                "several patches, so no patch is marked kept or pruned"]
    extra = answer.visual_tokens - sum(len(k) for k in answer.kept_indices)
    if extra > 0:
        return [f"+{extra} visual tokens that are not single patches (merged tokens or [CLS]) are not drawn"]
    return []


def answer_notes(pipeline: Pipeline, answer: Answer, *, heatmap: bool, borrowed: bool = False) -> list[str]:
    """The legend's text lines for an answer: `selection_notes`, and where the heatmap comes from when
    `borrowed` (another pass over the same frames: the method itself does not compute [CLS] scores)."""
    notes = selection_notes(answer, answer_geometry(pipeline, answer)[0])
    if answer.grid is not None and answer.grid[0] != answer.grid[1]:
        notes.append(f"each frame is {answer.grid[0]} x {answer.grid[1]} tokens; the cells beyond it are padding")
    if heatmap and borrowed:
        notes.append(f"the heatmap is the encoder's [CLS] attention on these frames ({answer.method.get('method')} "
                     "does not use it)")
    return notes


def answer_geometry(pipeline: Pipeline, answer: Answer) -> tuple[int, int]:
    """(frames, candidates per frame) of an answer: its own grid where the model picks one per input (Qwen-VL, whose
    frames are temporal patches), else the model's."""
    if answer.grid is None:
        return pipeline.num_frames, pipeline.num_patches
    return len(answer.tokens_per_frame or []), answer.grid[0] * answer.grid[1]


def answer_header(pipeline: Pipeline, answer: Answer, *, heatmap: bool, borrowed: bool = False) -> Header:
    """The header of `render_answer`'s picture: title, legend of what is drawn, notes."""
    return header_for(describe_selection(answer, *answer_geometry(pipeline, answer)),
                      marks=answer.kept_indices is not None, heatmap=heatmap,
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
    grid_side, images, kept, scores = _prepare(pipeline, frames, answer, cls_scores, heatmap)
    header = answer_header(pipeline, answer, heatmap=scores is not None, borrowed=answer.cls_scores is None)
    layout = layout.fit_header(header, len(images), images.shape[1])
    return render_kept_tokens(images, kept, scores, grid_side, header.title,
                              labels=_labels(frames, answer, len(images)), layout=layout,
                              notes=_notes(pipeline, answer, scores))


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
    grid_side, images, kept, scores = _prepare(pipeline, frames, answer, cls_scores, heatmap)
    title = describe_selection(answer, *answer_geometry(pipeline, answer))
    return write_kept_tokens_animation(path, images, kept, scores, grid_side, title, fps=fps,
                                       labels=_labels(frames, answer, len(images)),
                                       notes=_notes(pipeline, answer, scores))


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


def _notes(pipeline: Pipeline, answer: Answer, scores: torch.Tensor | None) -> list[str]:
    return answer_notes(pipeline, answer, heatmap=scores is not None, borrowed=answer.cls_scores is None)


def _prepare(pipeline: Pipeline, frames: Frames, answer: Answer, cls_scores: torch.Tensor | None,
             heatmap: bool) -> tuple[int, np.ndarray, list[list[int]] | None, torch.Tensor | None]:
    """Patches per side, the frames as the model saw them, the kept indices and the scores to draw (None: no
    heatmap), on a square grid of cells (`_on_square`)."""
    check_showable(answer.method.get("method", "?"))
    scores = (answer.cls_scores if cls_scores is None else cls_scores) if heatmap else None
    images = pipeline.display_frames(frames)
    if answer.grid is not None:
        return _on_square(images, answer.grid, answer.kept_indices, scores)
    grid_side = math.isqrt(pipeline.num_patches)
    if grid_side * grid_side != pipeline.num_patches:
        raise FasterVLMError(f"{pipeline.num_patches} patches per frame do not form a square grid; show cannot place them.")
    return grid_side, images, answer.kept_indices, scores


def _on_square(images: np.ndarray, grid: tuple[int, int], kept: list[list[int]] | None,
               scores: torch.Tensor | None) -> tuple[int, np.ndarray, list[list[int]] | None, torch.Tensor | None]:
    """A frame of rows x cols cells (a model that picks its grid per input) on a square of max(rows, cols) cells:
    the frame at the top left, white beyond it; kept indices and scores renumbered on the square (the extra cells
    are never kept and score the frame's lowest)."""
    import numpy as np

    rows, cols = grid
    side = max(rows, cols)
    cell = images.shape[1] // rows
    square = np.full((len(images), side * cell, side * cell, 3), 255, dtype=np.uint8)
    square[:, : rows * cell, : cols * cell] = images[:, : rows * cell, : cols * cell]
    renumbered = None if kept is None else [[index // cols * side + index % cols for index in frame] for frame in kept]
    if scores is not None:
        padded = scores.new_full((len(scores), side, side), 0.0) + scores.min(dim=1).values[:, None, None]
        padded[:, :rows, :cols] = scores.view(-1, rows, cols)
        scores = padded.flatten(1)
    return side, square, renumbered, scores


def _labels(frames: Frames, answer: Answer, count: int) -> list[str]:
    sources = frames.frame_indices or list(range(frames.pixels.shape[0]))
    sources = sources[:: max(1, len(sources) // count)][:count]  # a temporal patch spans several input frames
    if answer.kept_indices is None:
        return [f"frame {source}" for source in sources]
    return [f"frame {source}: {len(kept)} kept" for source, kept in zip(sources, answer.kept_indices)]
