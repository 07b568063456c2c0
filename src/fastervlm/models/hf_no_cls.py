"""Transformers VLMs whose vision encoder has no [CLS] token (LLaVA-OneVision's SigLIP, Qwen2-VL's ViT).

Not a family fastervlm runs: it is registered last so that loading such a checkpoint says why [CLS]-attention
pruning cannot work on it and which methods would, instead of a bare "unsupported model".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.methods.base import Pruner
from fastervlm.models.base import Generated, GenerationSettings, ModelAdapter, read_config, register_adapter
from fastervlm.models.hf_common import encoder_without_cls, no_cls_error
from fastervlm.timing import StageTimer


@register_adapter
class WithoutClsEncoder(ModelAdapter):
    family = "no-cls-encoders (refused)"
    media = "video"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return encoder_without_cls(config) is not None

    @classmethod
    def load(cls, path: Path, *, device: torch.device, dtype: torch.dtype | None) -> ModelAdapter:
        config = read_config(path)
        name = (config.get("architectures") or [config.get("model_type")])[0]
        error = no_cls_error(name, encoder_without_cls(config) or "unknown", "fastervlm")
        raise UnsupportedModelError(
            f"{error} fastervlm has no adapter for model_type {config.get('model_type')!r} yet, so it cannot load {path}."
        )

    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        raise NotImplementedError  # never loaded

    def generate(
        self, pixels: torch.Tensor, questions: list[str], pruner: Pruner, settings: GenerationSettings, timer: StageTimer
    ) -> list[Generated]:
        raise NotImplementedError  # never loaded
