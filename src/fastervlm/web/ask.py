"""One question about one uploaded video under one or two pruning configurations, on the same decoded frames.

Everything here is the library's: `Pipeline.frames` decodes, `Pipeline.pruner` builds the method from the
registry, `Pipeline.run` prompts and generates, `fastervlm.show` draws the kept tokens. This module
only checks the page's limits, turns form values into method settings and lays the results out as text.
No gradio import: the handlers in app.py call `ask` and the tests call it directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastervlm.errors import BudgetError, FasterVLMError, MediaError
from fastervlm.web.settings import WebSettings

if TYPE_CHECKING:
    from PIL.Image import Image

    from fastervlm.pipeline import Answer, Frames, Pipeline

BUDGET_REDUCTION = "reduction"
BUDGET_KEEP = "keep per frame"
BUDGET_NONE = "no budget"
BUDGET_KINDS = (BUDGET_REDUCTION, BUDGET_KEEP, BUDGET_NONE)
TYPICAL_REDUCTION = 0.9
BUDGETED = frozenset({"keep", "reduction"})
"""Pruner fields the budget controls set (`methods.base.BUDGET_PARAMETERS`); every other one is a method setting."""

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Configuration:
    """One column of the page: a registered method, a budget and the method's other settings."""

    method: str
    budget: str = BUDGET_REDUCTION
    value: float | None = TYPICAL_REDUCTION
    settings: dict[str, Any] = field(default_factory=dict)

    def method_settings(self) -> dict[str, Any]:
        """The keyword arguments of `Pipeline.pruner` (the budget as keep= or reduction=, plus the settings)."""
        if self.budget not in BUDGET_KINDS:
            raise BudgetError(f"unknown budget {self.budget!r}: choose one of {', '.join(BUDGET_KINDS)}.")
        clash = sorted(BUDGETED & set(self.settings))
        if clash:
            raise BudgetError(f"set {' and '.join(clash)} with the budget control, not in the method settings.")
        if self.budget == BUDGET_NONE:
            return dict(self.settings)
        if self.value is None:
            raise BudgetError(f"give a value for the budget ({self.budget}), or choose {BUDGET_NONE!r}.")
        budget = {"keep": int(self.value)} if self.budget == BUDGET_KEEP else {"reduction": float(self.value)}
        if self.budget == BUDGET_KEEP and self.value != int(self.value):
            raise BudgetError(f"keep per frame counts tokens: give a whole number, not {self.value:g}.")
        return {**budget, **self.settings}

    def label(self) -> str:
        """e.g. "fastervlm r=0.9", "fastervlm keep=26 (global_budget=True)", "none"."""
        parts = [self.method]
        if self.budget != BUDGET_NONE and self.value is not None:
            parts.append(f"r={self.value:g}" if self.budget == BUDGET_REDUCTION else f"keep={self.value:g}")
        defaults = method_defaults(self.method)
        changed = {k: v for k, v in self.settings.items() if k not in defaults or defaults[k] != v}
        if changed:
            parts.append("(" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")")
        return " ".join(parts)


def method_names() -> list[str]:
    """The registry's methods, in registration order."""
    from fastervlm.methods import list_methods

    return list(list_methods())


def method_defaults(name: str) -> dict[str, Any]:
    """A method's own settings (everything but the budget) with their default values, for the settings box."""
    from fastervlm.methods import method_settings

    return {setting.name: setting.default for setting in method_settings(name)}


def keeps_every_token(name: str) -> bool:
    """Whether a method takes no budget (the baseline): the page then sets its budget to "no budget"."""
    from fastervlm.methods import get_method

    return get_method(name).budget == "unbudgeted"


def typical_budgets(num_patches: int | None) -> dict[str, float | None]:
    """What each budget kind starts from when chosen: reduction 0.9, the per-frame count that it keeps (none
    without a fixed number of patches per frame), none."""
    from fastervlm.methods import create_pruner, default_method

    pruner = create_pruner(default_method(True), reduction=TYPICAL_REDUCTION)
    keep = None if num_patches is None else pruner.per_frame_budget(num_patches)
    return {BUDGET_REDUCTION: TYPICAL_REDUCTION, BUDGET_KEEP: keep, BUDGET_NONE: None}


def parse_settings(text: str | None) -> dict[str, Any]:
    """The settings box: a JSON object such as {"global_budget": true}; empty means the method's defaults."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BudgetError(f"method settings must be a JSON object such as {{\"global_budget\": true}} ({err.msg}).") from err
    if not isinstance(value, dict):
        raise BudgetError('method settings must be a JSON object such as {"global_budget": true}, not a list or a value.')
    return value


def video_seconds(path: Path) -> float | None:
    """The container's duration, or None when it does not say (or cannot be opened: decoding then says why)."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            streams = container.streams.video
            if streams and streams[0].duration is not None and streams[0].time_base is not None:
                return float(streams[0].duration * streams[0].time_base)
    except (av.FFmpegError, OSError):
        return None
    return None


def check_question(question: str | None, settings: WebSettings) -> None:
    """The page's bound on a question's length (one long prompt would hold the model for every other visitor)."""
    length = len(question or "")
    if length > settings.max_question_chars:
        raise FasterVLMError(f"the question is {length:,} characters long; this page takes questions up to "
                             f"{settings.max_question_chars:,} characters (ask a shorter question, or start the page "
                             "with a larger --max-question-chars).")


def check_video(path: str | os.PathLike | None, settings: WebSettings) -> Path:
    """The upload, within the page's size and length limits (the decoder reports anything else)."""
    if path is None or not str(path).strip():
        raise MediaError("no video: upload one (mp4, webm, avi, mov, mkv, gif) or pick the sample under the upload box.")
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"the upload {path.name} is gone from the server's temporary folder: upload it again.")
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise MediaError(f"{path.name} is {size / 2**20:.1f} MB; this page takes videos up to {settings.max_upload_mb:g} MB "
                         "(start it with a larger --max-upload-mb, or cut the video shorter).")
    seconds = video_seconds(path)
    if seconds is not None and seconds > settings.max_video_seconds:
        raise MediaError(f"{path.name} lasts {seconds:.0f} s; this page takes videos up to {settings.max_video_seconds:g} s "
                         "(start it with a larger --max-video-seconds, or cut the video shorter).")
    return path


@dataclass
class Outcome:
    """One configuration's answer and its kept-token picture (or why there is none)."""

    configuration: Configuration
    answer: Answer
    picture: Image | None = None
    no_picture: str | None = None


def ask(
    pipeline: Pipeline,
    video: str | os.PathLike | None,
    question: str | None,
    configurations: list[Configuration],
    settings: WebSettings,
    *,
    max_new_tokens: int | None = None,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Decode the video once, then answer under each configuration in turn (one generation at a time).

    The question's length and the settings are checked before decoding; an empty question by `run`.
    """
    report = progress or (lambda fraction, text: None)
    check_question(question, settings)
    path = check_video(video, settings)
    pruners = [pipeline.pruner(c.method, **c.method_settings()) for c in configurations]
    generation = settings.generation if max_new_tokens is None else replace(settings.generation, max_new_tokens=int(max_new_tokens))
    if generation.max_new_tokens < 1:
        raise FasterVLMError(f"max new tokens must be at least 1 (got {generation.max_new_tokens}).")
    report(0.05, "decoding the video")
    try:
        frames = pipeline.frames(video=path, flip=settings.flip)
    except MediaError as err:
        raise MediaError(str(err).replace(str(path), path.name)) from err
    outcomes = []
    for n, (configuration, pruner) in enumerate(zip(configurations, pruners)):
        report(0.1 + 0.8 * n / len(pruners), f"answering with {configuration.label()}")
        answer = pipeline.run([frames], [question], pruner, generation)[0]
        outcomes.append(Outcome(configuration, answer))
    report(0.95, "drawing the kept tokens")
    _draw(pipeline, frames, outcomes)
    return outcomes


def _draw(pipeline: Pipeline, frames: Frames, outcomes: list[Outcome]) -> None:
    """`fastervlm show`'s picture for each outcome. The heatmap is the encoder's [CLS] attention, the same for
    every configuration on these frames, so one that did not compute it (none) borrows another's."""
    from fastervlm.show import render_answer

    heatmap = next((o.answer.cls_scores for o in outcomes if o.answer.cls_scores is not None), None)
    for outcome in outcomes:
        try:
            outcome.picture = render_answer(pipeline, frames, outcome.answer, cls_scores=heatmap)
        except FasterVLMError as err:  # a method that prunes inside the LLM or merges patches: nothing to draw
            outcome.no_picture = str(err)


def summary_markdown(outcome: Outcome) -> str:
    """Token counts, time to first token and every stage's time, in Markdown."""
    answer = outcome.answer
    lines = [
        f"**{answer.visual_tokens} visual tokens** · prompt {answer.prompt_tokens} tokens · "
        f"{len(answer.output_ids)} generated · time to first token **{answer.time_to_first_token * 1000:.1f} ms**",
        "",
        "Stages (ms): " + " · ".join(f"{stage} {seconds * 1000:.1f}" for stage, seconds in answer.timings.items()),
    ]
    if outcome.no_picture:
        lines += ["", f"No kept-token picture: {outcome.no_picture}"]
    return "\n".join(lines)


def speedup_markdown(first: Outcome, second: Outcome) -> str:
    """How much sooner the first configuration starts answering than the second (same frames, same question)."""
    a, b = first.answer.time_to_first_token, second.answer.time_to_first_token
    ratio = f"**{b / a:.2f}×**" if a > 0 else "n/a"
    return (f"Time to first token: {first.configuration.label()} {a * 1000:.1f} ms, "
            f"{second.configuration.label()} {b * 1000:.1f} ms: speedup {ratio} "
            f"with {first.answer.visual_tokens} instead of {second.answer.visual_tokens} visual tokens.")
