"""The contract between the pipeline and a model family, and the registry that picks a family from a config.

One adapter file per family holds everything model-specific (loading, preprocessing, prompt, where the
vision features come from, how the LLM is called). Adapters never import each other, cli, eval, bench, show
or web. A new family is one file with a registered ModelAdapter subclass.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from fastervlm import media
from fastervlm.errors import CheckpointError
from fastervlm.methods.base import Pruner
from fastervlm.timing import StageTimer

Media = Literal["video", "image"]


@dataclass
class GenerationSettings:
    """How answers are decoded. Greedy by default; `sample=True` reproduces the original's T = 0.1 sampling
    (top_p and top_k from the checkpoint's generation_config.json)."""

    max_new_tokens: int = 1024
    sample: bool = False
    temperature: float = 0.1
    seed: int = 0


@dataclass
class Generated:
    """What an adapter returns for one sample; the pipeline adds media timings and settings."""

    text: str
    output_ids: list[int]
    prompt_tokens: int
    visual_tokens: int
    kept_indices: list[list[int]] | None
    cls_scores: torch.Tensor | None = None


class ModelAdapter(ABC):
    """One model family. Instances wrap a loaded model; class methods detect and load checkpoints."""

    family: ClassVar[str]
    media: ClassVar[Media]

    num_frames: int
    """Frames per sample (1 for image models)."""
    num_patches: int
    """Patch tokens per frame without [CLS]: the N that --reduction is a fraction of."""
    device: torch.device
    dtype: torch.dtype
    pixel_mean: ClassVar[tuple[float, float, float]] = media.OPENAI_CLIP_MEAN
    pixel_std: ClassVar[tuple[float, float, float]] = media.OPENAI_CLIP_STD
    """The per-channel normalisation `preprocess` applies (override when a family uses other statistics)."""

    @classmethod
    @abstractmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """Whether a checkpoint's config.json belongs to this family (decided from content, not model_type alone)."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, device: torch.device, dtype: torch.dtype | None, **options: Any) -> ModelAdapter:
        """Load the checkpoint at `path`; dtype None means the default of conventions.md (fp32 on CPU)."""

    @abstractmethod
    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames -> float pixels (T, 3, S, S) as this model's checkpoint expects."""

    def display_frames(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed pixels (T, 3, S, S) -> uint8 (T, S, S, 3): what the model saw (resized, cropped, flipped),
        with the normalisation undone, for pictures of the kept patches."""
        mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std).view(1, 3, 1, 1)
        rgb = (pixels.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
        return (rgb * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    @abstractmethod
    def generate(
        self,
        pixels: torch.Tensor,
        questions: list[str],
        pruner: Pruner,
        settings: GenerationSettings,
        timer: StageTimer,
    ) -> list[Generated]:
        """Answer a batch: pixels (B, T, 3, S, S), one question per sample."""


_ADAPTERS: list[type[ModelAdapter]] = []


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make a family loadable by `fastervlm.load`."""
    _ADAPTERS.append(cls)
    return cls


def registered_adapters() -> list[type[ModelAdapter]]:
    """Every registered family, in registration order (`fastervlm.models` imports the built-in ones)."""
    return list(_ADAPTERS)


def read_config(path: Path) -> dict[str, Any]:
    """A checkpoint directory's config.json, with clear errors for a missing or broken one."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist: pass --model the folder that holds config.json.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: pass --model the checkpoint folder itself (it holds config.json and the weights).")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}); re-download the checkpoint.") from err


def adapter_for(path: Path) -> type[ModelAdapter]:
    """The registered family whose `matches` accepts this checkpoint's config."""
    config = read_config(path)
    adapters = registered_adapters()
    for cls in adapters:
        if cls.matches(config):
            return cls
    families = ", ".join(cls.family for cls in adapters)
    raise CheckpointError(
        f"{path}/config.json (model_type {config.get('model_type')!r}, architectures {config.get('architectures')}) "
        f"is not a model fastervlm supports; supported families: {families}."
    )
