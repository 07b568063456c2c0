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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastervlm import engine, media
from fastervlm.engine import Answer
from fastervlm.errors import FasterVLMError
from fastervlm.frame_times import FrameTimes, frame_rate
from fastervlm.methods import Pruner, VisualTokens, create_pruner, default_method
from fastervlm.models.base import GenerationSettings, ModelAdapter, adapter_for
from fastervlm.llm import LLMBackend, TransformersLLM
from fastervlm.prompts import KeptTokens
from fastervlm.timing import StageTimer

if TYPE_CHECKING:
    from fastervlm.frame_cache import FrameCache


@dataclass
class Frames:
    """Preprocessed pixels of one input plus the source frame numbers they came from."""

    pixels: torch.Tensor
    frame_indices: list[int] | None
    decode_seconds: float
    times: FrameTimes | None = None
    """When the frames were taken in their video (None for pixels given directly, an image, or a video that
    declares no frame rate)."""


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

    def __init__(self, adapter: ModelAdapter, path: Path, llm: LLMBackend | None = None) -> None:
        self.adapter = adapter
        self.path = path
        self.llm = llm or TransformersLLM(adapter)
        """The LLM stage's backend (`fastervlm.llm`): the adapter's transformers model unless `load` chose another."""

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
        is given) or as given, checked against this model before any work (`engine.check_method`)."""
        if isinstance(method, Pruner):
            if settings:
                raise FasterVLMError("pass settings either to create_pruner or to answer(), not both.")
            pruner = method
        else:
            if method is None:
                method = default_method(settings.get("keep") is not None or settings.get("reduction") is not None)
            pruner = create_pruner(method, **settings)
        engine.check_method(self.adapter, pruner)
        return pruner

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
        times = None
        with timer("decode"):
            if video is not None:
                sampled = media.read_video_frames(video, self.num_frames, cache=cache)
                frames, indices = sampled.frames, sampled.indices
                if (fps := frame_rate(video)) is not None:
                    times = FrameTimes(indices, sampled.total_frames, fps)
            else:
                frames, indices = media.read_image(image), None
        with timer("preprocess"):
            tensor = self.adapter.preprocess(frames, flip=flip)
        return Frames(tensor, indices, timer.seconds["decode"] + timer.seconds["preprocess"], times)

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
        pruner = self.pruner(method, **method_settings)  # refused before the video is decoded
        return self.run([self.frames(video, image, pixels, flip=flip)], [question], pruner, generation)[0]

    def run(
        self,
        frames: list[Frames],
        questions: list[str],
        pruner: Pruner,
        generation: GenerationSettings | None = None,
    ) -> list[Answer]:
        """Answer a batch of decoded inputs (one question each) with one configuration: the engine straight down."""
        if len(frames) != len(questions):
            raise FasterVLMError(f"{len(frames)} samples but {len(questions)} questions: give one question per sample.")
        _check_questions(questions)
        answers = engine.run(self.adapter, [f.pixels for f in frames], questions, pruner,
                             generation or self.default_generation(), llm=self.llm, times=[f.times for f in frames])
        for answer, f in zip(answers, frames):
            answer.timings["decode_video"] = f.decode_seconds
            answer.frame_indices = f.frame_indices
        return answers

    # ----- one encoding, many questions and configurations (the evaluation harness) -------------------------------
    def check_method(self, pruner: Pruner) -> None:
        """Refuse, before any work, a method this model cannot run (`engine.check_method`)."""
        engine.check_method(self.adapter, pruner)

    def encode(self, frames: Frames, pruners: Sequence[Pruner]) -> VisualTokens:
        """Run the vision tower once on one input, computing every input any of `pruners` reads: each of them then
        selects from the same tokens (`prepare`) as if it had encoded the input alone."""
        inputs = frozenset().union(*(engine.encoder_inputs(pruner) for pruner in pruners))
        for pruner in pruners:
            engine.check_method(self.adapter, pruner)
        timer = StageTimer(self.adapter.device)
        with torch.inference_mode():
            pixels = frames.pixels.to(device=self.adapter.device, dtype=self.adapter.dtype)
            (tokens,) = engine.encode(self.adapter.stream, [pixels], inputs, timer, keep_cls=self.adapter.keep_cls,
                                      times=[frames.times])
        tokens.frame_indices = frames.frame_indices
        tokens.seconds = {"decode_video": frames.decode_seconds, **timer.seconds}
        return tokens

    def prepare(self, tokens: VisualTokens, pruner: Pruner) -> KeptTokens:
        """One configuration's kept tokens for an encoded input: its selection, projected once. `seconds` holds
        the selection's and the projector's time."""
        timer = StageTimer(self.adapter.device)
        with torch.inference_mode():
            selections = engine.select([tokens], pruner, timer)
            (kept,) = engine.project(self.adapter.stream, [tokens], selections, timer)
        kept.seconds = timer.seconds
        return kept

    def ask(
        self, kept: list[KeptTokens], questions: list[str], pruner: Pruner, generation: GenerationSettings | None = None,
    ) -> list[Answer]:
        """Answer a batch of prepared inputs, one question each, in one LLM call (the same input may appear several
        times; its prompt prefix is computed once). Timings hold each answer's share of this call only."""
        if len(kept) != len(questions):
            raise FasterVLMError(f"{len(kept)} samples but {len(questions)} questions: give one question per sample.")
        _check_questions(questions)
        return engine.ask(self.adapter, kept, questions, pruner, generation or self.default_generation(), llm=self.llm)


def _check_questions(questions: list[str]) -> None:
    if any(not q or not q.strip() for q in questions):
        raise FasterVLMError("the question is empty: type a question about the video.")


def load(
    model: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    share_prefix: bool = True,
    static_cache: bool | None = None,
    backend: str = "transformers",
    engine_settings: Any = None,
    **options: Any,
) -> Pipeline:
    """Load a checkpoint directory once; the family is detected from its config.json.

    share_prefix: questions on one input share the prompt prefix computed once (False: every prompt prefilled whole;
    the same answers). static_cache: decode on a static KV cache with a compiled step (None: on CUDA only; see
    `fastervlm.llm.TransformersLLM`). backend: "transformers" (the LLM stage in this process) or "vllm" (a vLLM
    engine; `engine_settings`: its options as KEY=VALUE strings or a dict; docs/vllm.md). options are
    family-specific, e.g. `video_tower=` for original-format Video-LLaVA.
    """
    path = Path(model).expanduser()
    adapter_cls = adapter_for(path)
    accepted = inspect.signature(adapter_cls.load).parameters
    for option in options:
        if option not in accepted:
            flag = "--" + option.replace("_", "-")
            raise FasterVLMError(f"{flag} does not apply to {adapter_cls.family} checkpoints ({path}); leave it out.")
    if backend not in BACKENDS:
        raise FasterVLMError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}.")
    if engine_settings and backend != "vllm":
        raise FasterVLMError("engine settings (--engine-option) are the vLLM engine's: give them with --backend vllm.")
    adapter = adapter_cls.load(path, device=resolve_device(device), dtype=resolve_dtype(dtype), **options)
    if backend == "vllm":
        from fastervlm.backends.vllm import VLLMBackend

        return Pipeline(adapter, path, VLLMBackend(adapter, path, engine_settings=engine_settings))
    return Pipeline(adapter, path, TransformersLLM(adapter, share_prefix=share_prefix, static_cache=static_cache))


BACKENDS = ("transformers", "vllm")
"""Where the LLM stage runs: this process (transformers), or a vLLM engine."""
