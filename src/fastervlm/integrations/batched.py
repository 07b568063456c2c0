"""Answer a harness's requests through the staged engine: grouped by input, encoded and prepared once, asked in batches.

A harness (lmms-eval) hands over many requests at once, often several about one video. Each input is decoded and
preprocessed once (on a prefetch thread, overlapping the model), encoded once (`Pipeline.encode`) and prepared once
for the configuration (`Pipeline.prepare`: the method's selection, projected); its questions then wait in a queue per
generation setting until `batch_size` of them (from this input or the next ones) are answered by one `Pipeline.ask`,
which computes the input's prompt prefix once for all its questions. Greedy answers equal `Pipeline.answer`'s for
the same question and input (in fp32 whatever the batch; tests/test_integrations_batched.py).

No harness is imported here: `integrations/lmms_eval.py` turns lmms-eval's requests into `Request`s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastervlm.engine import Answer
from fastervlm.errors import FasterVLMError
from fastervlm.eval.grouped import prefetched
from fastervlm.media import read_image, sample_indices
from fastervlm.methods import Pruner
from fastervlm.models.base import GenerationSettings
from fastervlm.pipeline import Frames, Pipeline
from fastervlm.prompts import KeptTokens


@dataclass(frozen=True)
class VideoFile:
    """A video handed over by its path (decoded and sampled as `fastervlm answer --video` does)."""

    path: Path


@dataclass(frozen=True, eq=False)
class Images:
    """Images handed over as one input: one image, or the frames of one video in order (a harness that decodes the
    video itself). Two `Images` are never the same input, even with equal pixels."""

    images: tuple[Any, ...]
    """PIL images (anything with `.convert("RGB")`) or uint8 (H, W, 3) arrays."""


@dataclass(frozen=True)
class Deferred:
    """An input that only the harness can produce, at a cost (a task that decodes its videos itself): produced on
    the prefetch thread when its turn comes, so that no more than the inputs in flight are held. Requests with the
    same `key` share it."""

    key: Hashable
    produce: Callable[[], VideoFile | Images] = field(compare=False, hash=False)


Visual = VideoFile | Images | Deferred
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class Request:
    """One question about one input, with how to decode its answer."""

    visual: Visual
    question: str
    generation: GenerationSettings
    stop: tuple[str, ...] = ()
    """Strings that end the answer: the text is cut before the first one (`cut_at_stop`)."""
    label: str = "a request"
    """Where the request comes from, named in errors (e.g. "task videomme, doc 12")."""


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the earliest occurrence of any non-empty stop string."""
    ends = [found for s in stop if s and (found := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def visual_from(items: Any) -> VideoFile | Images:
    """What a harness handed over for one question (a list of video paths, image paths or PIL images, possibly
    nested) as one input; a clear error for what no family answers about: nothing (a text-only task), several
    videos, videos mixed with images, audio or other objects."""
    flat = list(_flatten(items))
    if not flat:
        raise FasterVLMError("the task hands over no video or image (a text-only task): fastervlm answers questions "
                             "about videos and images; choose a task with visual input.")
    paths = [Path(item) for item in flat if isinstance(item, (str, os.PathLike))]
    videos = [path for path in paths if path.suffix.lower() not in IMAGE_EXTENSIONS]
    others = [type(item).__name__ for item in flat if not isinstance(item, (str, os.PathLike)) and not _is_image(item)]
    if others:
        raise FasterVLMError(f"the task hands over {', '.join(sorted(set(others)))} objects; fastervlm takes video "
                             "paths and images only: choose a video or image task.")
    if videos and len(flat) > 1:
        raise FasterVLMError(f"the task hands over {len(videos)} videos and {len(flat) - len(videos)} images for one "
                             "question; fastervlm answers about one video per question: choose a single-video task.")
    if videos:
        return VideoFile(videos[0])
    return Images(tuple(_open_image(item) if isinstance(item, (str, os.PathLike)) else item for item in flat))


def _flatten(items: Any) -> Iterator[Any]:
    if items is None:
        return
    if isinstance(items, (list, tuple)):
        for item in items:
            yield from _flatten(item)
    else:
        yield items


def _is_image(item: Any) -> bool:
    return hasattr(item, "convert") or (isinstance(item, np.ndarray) and item.ndim == 3)


def _open_image(path: str | os.PathLike) -> np.ndarray:
    return read_image(path)[0]


def check_media(pipeline: Pipeline, visual: Visual) -> None:
    """Refuse an input the family cannot take: a video for an image model, one image for a video model, several
    images for an image model. (A deferred input is checked once produced.)"""
    family, media = pipeline.adapter.family, pipeline.adapter.media
    if isinstance(visual, VideoFile) and media == "image":
        raise FasterVLMError(f"{family} answers questions about images, and the task hands over a video "
                             f"({visual.path.name}): evaluate it with a video family, or choose an image task.")
    if not isinstance(visual, Images):
        return
    count = len(visual.images)
    if media == "image" and count != 1:
        raise FasterVLMError(f"the task hands over {count} images for one question; {family} takes one image per "
                             "question: choose a single-image task.")
    if media == "video" and count < 2:
        raise FasterVLMError(f"the task hands over one image; {family} answers questions about videos (a video's "
                             "frames handed over as a list of images are accepted): choose a video task, or evaluate "
                             "it with an image family (llava-hf).")


def frames_for(pipeline: Pipeline, visual: Visual) -> Frames:
    """The preprocessed pixels of one input (a video's frames handed over as images: sampled to the model's frame
    count as a video file's are)."""
    if isinstance(visual, Deferred):
        visual = visual.produce()
    check_media(pipeline, visual)
    if isinstance(visual, VideoFile):
        return pipeline.frames(video=visual.path)
    started = time.perf_counter()
    rgb = _rgb_stack(visual.images)
    indices = None
    if pipeline.adapter.media == "video":
        indices = sample_indices(len(rgb), pipeline.num_frames)
        rgb = rgb[indices]
    return Frames(pipeline.adapter.preprocess(rgb), indices, time.perf_counter() - started)


def _rgb_stack(images: Sequence[Any]) -> np.ndarray:
    """(T, H, W, 3) uint8 from PIL images or arrays of one size."""
    arrays = [np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
        raise FasterVLMError(f"the frames handed over as images must be RGB images of one size, got shapes "
                             f"{sorted(shapes)}: resize them to one size in the task's doc_to_visual.")
    return np.stack(arrays).astype(np.uint8, copy=False)


@dataclass
class _Queued:
    index: int
    kept: KeptTokens


def answer_requests(
    pipeline: Pipeline,
    pruner: Pruner,
    requests: Sequence[Request],
    batch_size: int,
    on_answers: Callable[[int], None] = lambda count: None,
    prefetch: int = 1,
) -> list[Answer]:
    """Every request's answer, in request order (texts not yet cut at their stop strings). `on_answers(n)` is called
    as each batch of n answers ends (progress)."""
    if batch_size < 1:
        raise FasterVLMError(f"the batch size must be at least 1, got {batch_size}.")
    groups: dict[Visual, list[int]] = {}
    for index, request in enumerate(requests):
        labelled(request.label, lambda: check_media(pipeline, request.visual))  # refused before any work
        groups.setdefault(request.visual, []).append(index)
    answers: list[Answer | None] = [None] * len(requests)
    queues: dict[tuple, list[_Queued]] = {}

    def flush(key: tuple) -> None:
        batch, queues[key] = queues[key], []
        if batch:
            _ask(pipeline, pruner, requests, batch, answers)
            on_answers(len(batch))

    for (visual, indices), loaded in prefetched(list(groups.items()), lambda group: frames_for(pipeline, group[0]),
                                                prefetch):
        label = requests[indices[0]].label
        kept = labelled(label, lambda: pipeline.prepare(pipeline.encode(loaded.result(), [pruner]), pruner))
        for index in indices:
            key = astuple(requests[index].generation)
            queues.setdefault(key, []).append(_Queued(index, kept))
            if len(queues[key]) >= batch_size:
                flush(key)
    for key in list(queues):
        flush(key)
    assert all(answer is not None for answer in answers), "every queued request is flushed"
    return answers  # type: ignore[return-value]


def _ask(pipeline: Pipeline, pruner: Pruner, requests: Sequence[Request], batch: list[_Queued],
         answers: list[Answer | None]) -> None:
    """One `Pipeline.ask` for a batch sharing one generation setting; an error names the request it concerns."""
    chosen = [requests[q.index] for q in batch]
    try:
        got = pipeline.ask([q.kept for q in batch], [r.question for r in chosen], pruner, chosen[0].generation)
    except FasterVLMError as err:
        culprit = getattr(err, "sample", None)
        label = chosen[culprit].label if culprit is not None else ", ".join(r.label for r in chosen)
        raise FasterVLMError(f"{label}: {err}") from err
    for queued, answer in zip(batch, got):
        answers[queued.index] = answer


def labelled(label: str, work: Callable[[], Any]) -> Any:
    """work(), with the request (`label`) named in any FasterVLMError it raises."""
    try:
        return work()
    except FasterVLMError as err:
        raise FasterVLMError(f"{label}: {err}") from err
