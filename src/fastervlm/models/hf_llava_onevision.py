"""LLaVA-OneVision in transformers' format (llava-hf/llava-onevision-qwen2-{0.5b,7b,72b}-ov-hf,
LlavaOnevisionForConditionalGeneration): videos, with a vision encoder that has no [CLS] token.

How the stock model builds one video's tokens (`get_video_features`): every frame through SigLIP (384 px, patch
14: a 27 x 27 grid, 729 patches, no [CLS]); the feature layer's output (vision_feature_layer -1, strategy
"full": every token) goes through the projector FIRST; then each frame's grid of projected tokens is pooled by
bilinear interpolation to ceil(27 / 2) = 14 x 14 = 196 tokens (`apply_pooling`); the frames follow one another
and one learned `image_newline` embedding closes the video: 8 x 196 + 1 = 1569 tokens, the placeholder count of
the processor. Here:
- the candidates are the pooled tokens (N = 196 per frame: reduction 0.9 keeps 20), computed by the model's own
  projector and `apply_pooling`, so they are already in the LLM's space and `project` is the identity; keeping
  all of them reproduces the stock tokens exactly;
- a pooled token's score (the received attention; SigLIP has no [CLS]) is the per-patch score map pooled by the
  same `apply_pooling`: a weighted mean over its window, the plain 2 x 2 mean on an even grid. Its key
  (VisionZip) is the keys pooled alike;
- the newline is a trailing token (`trailing_tokens`): never a candidate, always after the video's kept tokens,
  not counted in `visual_tokens`, text to FastV. Kept indices number the pooled grid row by row.
Images take the anyres path (tiles, unpadding, newline tokens per row), which is not pruned: while a method
prunes, an image input is refused with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import SiglipImageProcessorPil

from fastervlm.models.base import register_adapter
from fastervlm.models.hf_base import (FrameProcessor, HFAdapter, HFStream, TinyParts, require_select_strategy,
                                      saved_frame_settings, write_json)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
"""The pixel statistics of SigLIP, which LLaVA-OneVision's processors use."""
VIDEO_PROCESSOR_FILES = ("video_preprocessor_config.json", "video_processor/preprocessor_config.json",
                         "preprocessor_config.json")
"""Where checkpoints keep the video processor's settings (newer hub revisions, older ones, the image processor)."""


@dataclass
class ProjectedPooledStream(HFStream):
    """Videos whose projected patch tokens are pooled per frame (`pool`: (B*T, patches, C) -> (B*T, N, C), the
    model's own `apply_pooling`) and closed by a trailing `newline` token."""

    pool: Any = None
    newline: nn.Parameter | None = None

    candidates_projected = True

    @property
    def tokens_per_frame(self) -> int:
        return math.ceil(math.isqrt(self.grid) / 2) ** 2

    def candidates(self, hidden: torch.Tensor) -> torch.Tensor:
        projected = self.projector(super().candidates(hidden).flatten(0, 1))  # frames one at a time, as stock
        return self.pool(projected).unflatten(0, hidden.shape[:2])

    def candidate_scores(self, scores: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(scores.reshape(-1, scores.shape[-1], 1))
        return pooled.view(*scores.shape[:-1], -1)

    def candidate_keys(self, keys: torch.Tensor) -> torch.Tensor:
        items, heads, patches, dim = keys.shape
        pooled = self.pool(keys.transpose(1, 2).reshape(items, patches, heads * dim))
        return pooled.view(items, -1, heads, dim).transpose(1, 2)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens  # the candidates are projected already

    def trailing_tokens(self) -> torch.Tensor | None:
        return None if self.newline is None else self.newline[None]


@register_adapter
class LlavaOnevisionHF(HFAdapter):
    """LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): SigLIP without [CLS], pooled after the projector."""

    media = "video"
    model_class = "LlavaOnevisionForConditionalGeneration"
    model_types = ("llava_onevision",)
    unpruned_inputs = ("pixel_values",)
    pixel_mean = SIGLIP_MEAN
    pixel_std = SIGLIP_STD

    @classmethod
    def streams(cls, model: nn.Module) -> list[HFStream]:
        config, base = model.config, model.model
        require_select_strategy(config, "full", "LLaVA-OneVision")  # SigLIP has no [CLS]: every token is a patch
        return [
            ProjectedPooledStream("video", "pixel_values_videos", config.video_token_id, base.vision_tower,
                                  base.multi_modal_projector, config.vision_feature_layer, first_token_fed=True,
                                  as_list=False, pool=base.apply_pooling, newline=base.image_newline),
        ]

    @classmethod
    def frame_processor(cls, path: Path) -> FrameProcessor:
        """The video processor's settings (resize to the square size, rescale, normalise) applied per frame with
        SigLIP's PIL image processor: LlavaOnevisionVideoProcessor itself needs torchvision, and the saved image
        processor is the anyres one, for images."""
        processor = SiglipImageProcessorPil(**saved_frame_settings(path, VIDEO_PROCESSOR_FILES))
        return lambda frames: processor(images=frames, return_tensors="pt")["pixel_values"]

    @classmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        """SigLIP without its head (as the hub checkpoints) before a Qwen2 LLM, the feature layer the last one."""
        from transformers import LlavaOnevisionConfig

        vision = {key: parts.clip[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads", "patch_size")}
        siglip = dict(vision, model_type="siglip_vision_model", image_size=parts.image_size, vision_use_head=False)
        side = parts.image_size
        return LlavaOnevisionConfig(text_config=dict(parts.text, model_type="qwen2"), vision_config=siglip,
                                    image_token_index=parts.ids["image"], video_token_index=parts.ids["video"],
                                    vision_feature_layer=-1, vision_feature_select_strategy="full",
                                    image_grid_pinpoints=[[side, side], [side, 2 * side]])

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        """The hub's files: the anyres image processor, the video processor (square resize, SigLIP statistics) and
        the chat template beside them."""
        from fastervlm.tiny.hf import CHAT_TEMPLATE

        side = parts.image_size
        siglip = {**{key: frame[key] for key in ("do_resize", "resample", "do_rescale", "rescale_factor",
                                                  "do_normalize", "do_convert_rgb")},
                  "size": {"height": side, "width": side}, "image_mean": list(SIGLIP_MEAN), "image_std": list(SIGLIP_STD)}
        write_json(folder / "preprocessor_config.json",
                   {"image_processor_type": "LlavaOnevisionImageProcessor", "processor_class": "LlavaOnevisionProcessor",
                    "image_grid_pinpoints": [[side, side], [side, 2 * side]], "do_pad": True, **siglip})
        write_json(folder / "video_preprocessor_config.json",
                   {"video_processor_type": "LlavaOnevisionVideoProcessor", "processor_class": "LlavaOnevisionProcessor",
                    **siglip})
        write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
