"""Transformers VLMs whose vision encoder has no [CLS] token (SigLIP, the Qwen-VL ViTs), and the refusal of those
fastervlm has no adapter for (Qwen2-VL, Qwen3-VL-MoE).

Not a family fastervlm runs: it is registered last (builtin.py) so that loading such a checkpoint says why
[CLS]-attention pruning cannot work on it and which methods would, instead of a bare "unsupported model".
`fastervlm.apply` asks `encoder_without_cls` for the same reason, on families that do run (LLaVA-OneVision,
Qwen2.5-VL, Qwen3-VL) as well, to name their encoder. A family that runs is claimed by its own adapter first;
this one only catches the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.models.base import ModelAdapter, PromptPiece, register_adapter
from fastervlm.models.checkpoint import read_config

# Vision encoders known to have no [CLS] token, by the model_type of their config (or of the whole VLM's).
_NO_CLS_VISION = {
    "siglip_vision_model": "SigLIP",
    "siglip2_vision_model": "SigLIP 2",
    "qwen2_vl": "Qwen2-VL's ViT",
    "qwen2_vl_vision": "Qwen2-VL's ViT",
    "qwen2_5_vl": "Qwen2.5-VL's ViT",
    "qwen2_5_vl_vision": "Qwen2.5-VL's ViT",
    "qwen3_vl": "Qwen3-VL's ViT",
    "qwen3_vl_vision": "Qwen3-VL's ViT",
    "qwen3_vl_moe": "Qwen3-VL's ViT",
}
_NO_CLS_MODELS = {
    "qwen2_vl": "Qwen2-VL's ViT",
    "qwen2_5_vl": "Qwen2.5-VL's ViT",
    "qwen3_vl": "Qwen3-VL's ViT",
    "qwen3_vl_moe": "Qwen3-VL's ViT",
}
_CLS_VISION = ("clip_vision_model", "clip")


def _tiny_qwen2_vl(parts: Any) -> Any:
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(parts.text, model_type="qwen2_vl_text", rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=parts.text["hidden_size"], num_heads=2, patch_size=14),
        image_token_id=parts.ids["image"], video_token_id=parts.ids["video"],
    )


TINY_CONFIGS = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", _tiny_qwen2_vl),
}
"""Tiny specs (transformers class, config from fastervlm.tiny.hf's TinyParts) of the refused families, for the tests
of the refusal."""


def encoder_without_cls(config: dict[str, Any]) -> str | None:
    """The vision encoder's name when the config shows one known to have no [CLS] token, else None."""
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if vision_type in _CLS_VISION:
        return None
    return _NO_CLS_VISION.get(vision_type) or _NO_CLS_MODELS.get(config.get("model_type"))


@register_adapter
class WithoutClsEncoder(ModelAdapter):
    family = "no-cls-encoders (refused)"
    media = "video"
    fallback = True

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return encoder_without_cls(config) is not None

    @classmethod
    def load(cls, path: Path, *, device: torch.device, dtype: torch.dtype | None) -> ModelAdapter:
        from fastervlm.methods import default_method, no_cls_error

        config = read_config(path)
        name = (config.get("architectures") or [config.get("model_type")])[0]
        error = no_cls_error(name, encoder_without_cls(config) or "unknown", default_method(budget_given=True))
        raise UnsupportedModelError(
            f"{error} fastervlm has no adapter for model_type {config.get('model_type')!r} yet, so it cannot load {path}."
        )

    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        raise NotImplementedError  # never loaded

    def prompt(self, question: str, visual: Any = None) -> list[PromptPiece]:
        raise NotImplementedError  # never loaded
