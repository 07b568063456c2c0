"""LLaVA-NeXT-Video in transformers' format (llava-hf/LLaVA-NeXT-Video-7B-hf, LlavaNextVideoForConditionalGeneration).

Each frame goes through CLIP ViT-L/14-336 (24 x 24 = 576 patches, [CLS] dropped), then the model's own 2 x 2
spatial pooling (144 tokens per frame), then the projector. The budget is per frame over the pooled tokens
(N = 144: reduction 0.9 keeps 14 per frame). A pooled token's [CLS] score is the mean of the [CLS] attention of
the patches its pooling window covers (average pooling of the score map with the pooler's window), whatever
the pooler itself does with the features; kept indices number the pooled grid row by row.
Images take the anyres path (tiles plus newline tokens), which is not pruned: while a method prunes, an image
input is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPImageProcessorPil

from fastervlm.models.base import register_adapter
from typing import Any

from fastervlm.models.hf_base import (FrameProcessor, HFAdapter, HFStream, TinyParts, require_select_strategy,
                                      saved_frame_settings, write_json)


@dataclass
class PooledVideoStream(HFStream):
    """Videos whose patch tokens are pooled (stride x stride windows) before the projector."""

    resampler: nn.Module | None = None
    stride: int = 2

    @property
    def side(self) -> int:
        return self.tower.config.image_size // self.tower.config.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return (self.side // self.stride) ** 2

    @property
    def keys_defined(self) -> bool:  # the pooled token's key is not defined here
        return False

    def candidates(self, hidden: torch.Tensor) -> torch.Tensor:
        patches = super().candidates(hidden)
        return self.resampler(patches.flatten(0, 1)).unflatten(0, patches.shape[:2])

    def candidate_scores(self, scores: torch.Tensor) -> torch.Tensor:
        grid = scores.reshape(-1, 1, self.side, self.side)
        pooled = F.avg_pool2d(grid, kernel_size=self.stride, stride=self.stride).flatten(1)
        return pooled.view(*scores.shape[:-1], -1)


@register_adapter
class LlavaNextVideoHF(HFAdapter):
    """LLaVA-NeXT-Video (llava-hf/LLaVA-NeXT-Video-7B-hf): CLIP patches pooled 2 x 2 per frame before the projector;
    the budget is per frame over the pooled tokens, each scored by the mean [CLS] attention of its window."""

    media = "video"
    model_class = "LlavaNextVideoForConditionalGeneration"
    model_types = ("llava_next_video",)
    unpruned_inputs = ("pixel_values",)

    @classmethod
    def streams(cls, model: nn.Module) -> list[HFStream]:
        config, base = model.config, model.model
        require_select_strategy(config, "default", "LLaVA-NeXT-Video")
        return [
            PooledVideoStream("video", "pixel_values_videos", config.video_token_id,
                              base.vision_tower, base.multi_modal_projector, config.vision_feature_layer,
                              first_token_fed=False, as_list=True, resampler=base.vision_resampler,
                              stride=config.spatial_pool_stride),
        ]

    @classmethod
    def frame_processor(cls, path: Path) -> FrameProcessor:
        """The video processor's settings (video_preprocessor_config.json, else preprocessor_config.json) applied
        per frame with CLIP's PIL processor: the saved image processor is LLaVA-NeXT's anyres one, for images."""
        settings = saved_frame_settings(path, ("video_preprocessor_config.json", "preprocessor_config.json"))
        processor = CLIPImageProcessorPil(**settings)
        return lambda frames: processor(images=frames, return_tensors="pt")["pixel_values"]

    @classmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        from transformers import LlavaNextVideoConfig

        side = parts.image_size
        return LlavaNextVideoConfig(text_config=parts.text, vision_config=parts.clip,
                                    image_token_index=parts.ids["image"], video_token_index=parts.ids["video"],
                                    vision_feature_layer=-2, vision_feature_select_strategy="default",
                                    image_grid_pinpoints=[[side, side], [side, 2 * side]],
                                    image_seq_length=parts.patches, video_seq_length=parts.frames * parts.patches // 4)

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        from fastervlm.tiny.hf import CHAT_TEMPLATE

        side = parts.image_size
        write_json(folder / "preprocessor_config.json",
                   {"image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextVideoProcessor",
                    "image_grid_pinpoints": [[side, side], [side, 2 * side]], "do_pad": True, **frame})
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
