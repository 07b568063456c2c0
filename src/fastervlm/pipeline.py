"""The public API: load a model once, then answer questions about videos (or images) with a pruning method.

    import fastervlm
    vlm = fastervlm.load("ckpts/Video-LLaVA-7B", video_tower="ckpts/LanguageBind_Video_merge")
    ans = vlm.answer("What is the man doing?", video="clip.mp4", method="fastervlm", reduction=0.9)
    ans.text, ans.kept_indices, ans.visual_tokens, ans.timings

The CLI, the evaluation harness, the benchmark and the web page all go through this module.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastervlm import media
from fastervlm.errors import FasterVLMError
from fastervlm import engine
from fastervlm.methods import Pruner, create_pruner, default_method
from fastervlm.models.base import GenerationSettings, ModelAdapter, adapter_for
from fastervlm.timing import StageTimer, time_to_first_token

if TYPE_CHECKING:
    from fastervlm.frame_cache import FrameCache


@dataclass
class Answer:
    """One answered question: the text, what the LLM saw, and where the time went."""

    text: str
    output_ids: list[int]
    visual_tokens: int
    kept_indices: list[list[int]] | None
    prompt_tokens: int
    timings: dict[str, float]
    method: dict[str, Any]
    frame_indices: list[int] | None = None
    tokens_per_frame: list[int] | None = None
    """Visual tokens of each frame in the prompt (they differ between frames under a global budget)."""
    llm_prefill_flops: int | None = None
    """The analytic LLM prefill FLOPs this answer reached (docs/flops.md)."""
    cls_scores: torch.Tensor | None = field(default=None, repr=False)
    """(T, N) [CLS] attention per frame when the method computed it (for pictures); not in JSON."""

    @property
    def time_to_first_token(self) -> float:
        """Seconds from preprocessed pixels to the first generated token."""
        return time_to_first_token(self.timings)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object (fields of conventions.md): the text is under "answer"."""
        out = asdict(self)
        out.pop("cls_scores")
        return {"answer": out.pop("text"), **out}


@dataclass
class Frames:
    """Preprocessed pixels of one sample plus the source frame numbers they came from."""

    pixels: torch.Tensor
    frame_indices: list[int] | None
    decode_seconds: float


@dataclass
class Encoding:
    """One sample's vision-tower output, computed once for every question and configuration that shares it
    (`Pipeline.encode`); the pixels are not kept."""

    encoded: engine.Encoded
    frame_indices: list[int] | None
    seconds: dict[str, float]
    """Wall seconds of the shared work: "decode_video" (decode + preprocess) and the encoder's stages."""


@dataclass
class Prepared:
    """One sample's visual tokens under one configuration (`Pipeline.prepare`): ask it any number of questions."""

    visual: engine.Visual
    frame_indices: list[int] | None
    seconds: dict[str, float]
    """Wall seconds of selection and projection for this configuration."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'cuda' when a GPU is present and nothing was asked for, else the CPU; a clear error for a bad name."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise FasterVLMError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FasterVLMError(f"--device {device} asks for a GPU but torch sees none; use --device cpu.")
    return resolved


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype from its name; None leaves the choice to the adapter (fp32 on CPU, the checkpoint's on CUDA)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise FasterVLMError(f"--dtype {dtype!r} is not supported; use one of {', '.join(sorted(_DTYPES))}.")
    return _DTYPES[dtype]


class Pipeline:
    """A loaded model plus the steps around it: media decoding, preprocessing, pruning, generation."""

    def __init__(self, adapter: ModelAdapter, path: Path) -> None:
        self.adapter = adapter
        self.path = path

    @property
    def num_frames(self) -> int:
        return self.adapter.num_frames

    @property
    def num_patches(self) -> int:
        return self.adapter.num_patches

    def default_generation(self) -> GenerationSettings:
        """Greedy decoding up to the checkpoint's default answer length (1024, the original's; a tiny random
        checkpoint's own short one): what `generation=None` means."""
        from fastervlm.tiny.identity import default_max_new_tokens

        return GenerationSettings(max_new_tokens=default_max_new_tokens(self.path))

    def pruner(self, method: str | Pruner | None = None, **settings: Any) -> Pruner:
        """A method instance from a name (by default the registry's default method, or its baseline when no budget
        is given) or as given."""
        if isinstance(method, Pruner):
            if settings:
                raise FasterVLMError("pass settings either to create_pruner or to answer(), not both.")
            return method
        if method is None:
            method = default_method(settings.get("keep") is not None or settings.get("reduction") is not None)
        return create_pruner(method, **settings)

    def frames(
        self,
        video: str | os.PathLike | None = None,
        image: str | os.PathLike | None = None,
        pixels: torch.Tensor | None = None,
        *,
        flip: bool = False,
        cache: FrameCache | None = None,
    ) -> Frames:
        """Decode and preprocess exactly one of video / image / already preprocessed pixels (T, 3, H, W); `cache`
        keeps a video's sampled frames on disk between runs (`fastervlm.frame_cache`)."""
        given = [name for name, value in (("video", video), ("image", image), ("pixels", pixels)) if value is not None]
        if len(given) != 1:
            raise FasterVLMError(f"give exactly one of video, image or pixels (got {', '.join(given) or 'none'}).")
        if pixels is not None:
            return Frames(self._check_pixels(pixels), None, 0.0)
        if image is not None and self.adapter.media == "video":
            raise FasterVLMError(f"{self.adapter.family} answers questions about videos: pass --video, not --image.")
        if video is not None and self.adapter.media == "image":
            raise FasterVLMError(f"{self.adapter.family} answers questions about images: pass --image, not --video.")
        timer = StageTimer("cpu")  # CPU work: no GPU sync, which would stall a prefetch thread behind the model
        with timer("decode"):
            if video is not None:
                sampled = media.read_video_frames(video, self.num_frames, cache=cache)
                frames, indices = sampled.frames, sampled.indices
            else:
                frames, indices = media.read_image(image), None
        with timer("preprocess"):
            tensor = self.adapter.preprocess(frames, flip=flip)
        return Frames(tensor, indices, timer.seconds["decode"] + timer.seconds["preprocess"])

    def display_frames(self, frames: Frames) -> np.ndarray:
        """uint8 (T, S, S, 3) images of what the model saw for these frames (for `fastervlm.show`)."""
        return self.adapter.display_frames(frames.pixels)

    def _check_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        expected = self.num_frames
        if pixels.ndim != 4 or pixels.shape[0] != expected or pixels.shape[1] != 3:
            raise FasterVLMError(
                f"pixels must have shape ({expected}, 3, H, W) for {self.adapter.family}, got {tuple(pixels.shape)}; "
                "preprocess with Pipeline.frames(video=...) or pass video= instead."
            )
        return pixels

    def answer(
        self,
        question: str,
        *,
        video: str | os.PathLike | None = None,
        image: str | os.PathLike | None = None,
        pixels: torch.Tensor | None = None,
        method: str | Pruner | None = None,
        generation: GenerationSettings | None = None,
        flip: bool = False,
        **method_settings: Any,
    ) -> Answer:
        """Answer one question; `method_settings` (keep=, reduction=, ...) configure `method` by name."""
        frames = self.frames(video, image, pixels, flip=flip)
        return self.answer_frames([frames], [question], self.pruner(method, **method_settings), generation)[0]

    def answer_frames(
        self,
        frames: list[Frames],
        questions: list[str],
        pruner: Pruner,
        generation: GenerationSettings | None = None,
    ) -> list[Answer]:
        """Answer a batch of already decoded samples (one question each) with one pruning configuration."""
        if len(frames) != len(questions):
            raise FasterVLMError(f"{len(frames)} samples but {len(questions)} questions: give one question per sample.")
        _check_questions(questions)
        timer = StageTimer(self.adapter.device)
        pixels = torch.stack([f.pixels for f in frames])
        generated = engine.answer(self.adapter, pixels, questions, pruner, generation or self.default_generation(), timer)
        decoded = [{"decode_video": f.decode_seconds} for f in frames]
        return self._answers(generated, pruner, timer, decoded, [f.frame_indices for f in frames])

    # ----- one encoding, many questions and configurations (the evaluation harness) -------------------------------
    def check_method(self, pruner: Pruner) -> None:
        """Refuse, before any work, a method this model cannot run (a [CLS]-based one without [CLS], a budget above
        the patches per frame, FastV's layer past the LLM's depth)."""
        engine.check_inputs(self.adapter.stream, engine.encoder_inputs(pruner), self.adapter.family, pruner.name)
        pruner.check_model(num_patches=self.num_patches, llm_layers=self.adapter.llm_config.num_hidden_layers)

    def encode(self, frames: Frames, pruners: Sequence[Pruner]) -> Encoding:
        """Run the vision tower once on one sample, computing every input any of `pruners` reads: each of them
        then selects from the same encoding (`prepare`) as if it had encoded the sample alone."""
        inputs = frozenset().union(*(engine.encoder_inputs(pruner) for pruner in pruners))
        for pruner in pruners:
            self.check_method(pruner)
        timer = StageTimer(self.adapter.device)
        with torch.inference_mode():
            pixels = frames.pixels[None].to(device=self.adapter.device, dtype=self.adapter.dtype)
            (encoded,) = engine.encode(self.adapter.stream, pixels, inputs, timer, keep_cls=self.adapter.keep_cls)
        return Encoding(encoded, frames.frame_indices, {"decode_video": frames.decode_seconds, **timer.seconds})

    def prepare(self, encoding: Encoding, pruner: Pruner) -> Prepared:
        """One configuration's visual tokens for an encoded sample: its selection, projected once."""
        timer = StageTimer(self.adapter.device)
        with torch.inference_mode():
            selections = engine.select([encoding.encoded], pruner, timer)
            (visual,) = engine.project(self.adapter.stream, [encoding.encoded], selections, timer)
        return Prepared(visual, encoding.frame_indices, timer.seconds)

    def answer_prepared(
        self, prepared: list[Prepared], questions: list[str], pruner: Pruner, generation: GenerationSettings | None = None,
    ) -> list[Answer]:
        """Answer a batch of prepared samples, one question each, in one `generate` call (left-padded; the same
        sample may appear several times). Timings hold each answer's share of this call only."""
        if len(prepared) != len(questions):
            raise FasterVLMError(f"{len(prepared)} samples but {len(questions)} questions: give one question per sample.")
        _check_questions(questions)
        timer = StageTimer(self.adapter.device)
        generated = engine.answer_visuals(self.adapter, [p.visual for p in prepared], questions, pruner,
                                          generation or self.default_generation(), timer)
        return self._answers(generated, pruner, timer, [{} for _ in prepared], [p.frame_indices for p in prepared])

    def _answers(self, generated: list[engine.Generated], pruner: Pruner, timer: StageTimer,
                 own: list[dict[str, float]], frame_indices: list[list[int] | None]) -> list[Answer]:
        """Answers from a batch's results: each sample's `own` timings plus its share of the batch's stages."""
        per_sample = {stage: seconds / len(generated) for stage, seconds in timer.seconds.items()}
        return [
            Answer(text=g.text, output_ids=g.output_ids, visual_tokens=g.visual_tokens, kept_indices=g.kept_indices,
                   prompt_tokens=g.prompt_tokens, timings={**timings, **per_sample}, method=pruner.settings(),
                   frame_indices=indices, tokens_per_frame=g.tokens_per_frame,
                   llm_prefill_flops=g.llm_prefill_flops, cls_scores=g.cls_scores)
            for g, timings, indices in zip(generated, own, frame_indices)
        ]


def _check_questions(questions: list[str]) -> None:
    if any(not q or not q.strip() for q in questions):
        raise FasterVLMError("the question is empty: type a question about the video.")


def load(
    model: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> Pipeline:
    """Load a checkpoint directory once; the family is detected from its config.json.

    options are family-specific, e.g. `video_tower=` for original-format Video-LLaVA.
    """
    path = Path(model).expanduser()
    adapter_cls = adapter_for(path)
    accepted = inspect.signature(adapter_cls.load).parameters
    for option in options:
        if option not in accepted:
            flag = "--" + option.replace("_", "-")
            raise FasterVLMError(f"{flag} does not apply to {adapter_cls.family} checkpoints ({path}); leave it out.")
    adapter = adapter_cls.load(path, device=resolve_device(device), dtype=resolve_dtype(dtype), **options)
    return Pipeline(adapter, path)

