"""LLaVA-1.5 in transformers' format (llava-hf/llava-1.5-7b-hf, LlavaForConditionalGeneration).

One image, CLIP ViT-L/14-336: 576 patches from the penultimate layer ([CLS] dropped under the "default"
strategy), top-L over the image by the [CLS] attention of that layer (the FasterVLM paper's image setting).
Original-format LLaVA configs also say model_type "llava"; they are flat Llama configs with mm_* fields and
are left to their own adapter.
"""

from __future__ import annotations

from torch import nn

from fastervlm.models.base import register_adapter
from pathlib import Path
from typing import Any

from fastervlm.models.hf_base import HFAdapter, HFStream, TinyParts, write_json


@register_adapter
class LlavaHF(HFAdapter):
    media = "image"
    model_class = "LlavaForConditionalGeneration"
    model_types = ("llava",)

    @classmethod
    def streams(cls, model: nn.Module) -> list[HFStream]:
        config, base = model.config, model.model
        return [
            HFStream("image", "pixel_values", config.image_token_id,
                         base.vision_tower, base.multi_modal_projector, config.vision_feature_layer,
                         first_token_fed=config.vision_feature_select_strategy == "full", as_list=True),
        ]

    @classmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        from transformers import LlavaConfig

        return LlavaConfig(text_config=parts.text, vision_config=parts.clip, image_token_index=parts.ids["image"],
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           image_seq_length=parts.patches)

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        from fastervlm.tiny.hf import CHAT_TEMPLATE

        super().write_tiny_processor(folder, frame, parts)
        write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})  # beside the processor, as llava-hf
