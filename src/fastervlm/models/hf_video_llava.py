"""Video-LLaVA in transformers' format (LanguageBind/Video-LLaVA-7B-hf, VideoLlavaForConditionalGeneration).

Differences from the original checkpoints that matter here: the port has no temporal
attention (each frame is encoded on its own, so the [CLS] scores differ from the original's), and the stock
model feeds every frame's [CLS] token with its 256 patches (8 x 257 = 2056 video tokens). By default FasterVLM
prunes the 256 patches per frame and drops the frame [CLS] (2048 -> 8L, as the paper's video code);
`keep_cls=True` keeps each frame's [CLS] in front of its kept patches (8L + 8; all of them = the stock model).
Images go through the separate image tower, whose stock features already drop [CLS] (256 per image).
"""

from __future__ import annotations

from torch import nn

from fastervlm.models.base import register_adapter
from pathlib import Path
from typing import Any

from fastervlm.models.hf_base import HFAdapter, HFStream, TinyParts


@register_adapter
class VideoLlavaHF(HFAdapter):
    media = "video"
    model_class = "VideoLlavaForConditionalGeneration"
    model_types = ("video_llava",)
    processor_options = {"return_legacy_image_output": False}  # `pixel_values`, not the deprecated legacy key

    @classmethod
    def streams(cls, model: nn.Module) -> list[HFStream]:
        config, base = model.config, model.model
        images_fed_cls = config.vision_feature_select_strategy == "full"
        return [
            HFStream("video", "pixel_values_videos", config.video_token_id,
                         base.video_tower, base.multi_modal_projector, config.vision_feature_layer,
                         first_token_fed=True, as_list=False),
            HFStream("image", "pixel_values", config.image_token_id,
                         base.image_tower, base.multi_modal_projector, config.vision_feature_layer,
                         first_token_fed=images_fed_cls, as_list=False),
        ]

    @classmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        from transformers import VideoLlavaConfig

        return VideoLlavaConfig(text_config=parts.text, vision_config=parts.clip, image_token_index=parts.ids["image"],
                                video_token_index=parts.ids["video"], vision_feature_layer=-2,
                                vision_feature_select_strategy="default", image_seq_length=parts.patches,
                                video_seq_length=parts.frames * (parts.patches + 1))

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        from transformers import VideoLlavaImageProcessor

        VideoLlavaImageProcessor(**frame).save_pretrained(folder)  # the hub checkpoint has no chat template
