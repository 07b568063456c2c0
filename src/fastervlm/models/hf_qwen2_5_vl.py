"""Qwen2.5-VL in transformers' format (Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct, Qwen2_5_VLForConditionalGeneration).

How the stock model builds a video's tokens: the processor resizes every frame to a grid of 14-pixel patches whose
sides are multiples of 28 (its min/max pixels per frame), and stacks frames in pairs (a temporal patch); the ViT
runs window attention in most blocks and full attention (within a temporal patch) in a few, the last included;
the merger turns each 2 x 2 block of patches into one LLM token. The prompt holds one run of placeholders per
video, between <|vision_start|> and <|vision_end|>; M-RoPE gives each token (t, h, w) with t = the temporal patch
x tokens_per_second x seconds per temporal patch, and the text after the video continues from the slot start +
max(rows, cols). Here (`qwen_stream`, `qwen_base`): a frame is a temporal patch, the candidates are the merger's
outputs, the kept tokens keep their stock positions and the text its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastervlm.frame_times import FrameTimes
from fastervlm.models.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PromptPiece, VisualSlot, register_adapter
from fastervlm.models.hf_base import TinyParts
from fastervlm.models.qwen_base import PLACEHOLDERS, QwenAdapter, mrope_sections, write_qwen_processor
from fastervlm.models.qwen_frames import FrameSettings

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template of the Qwen2.5-VL Instruct checkpoints (a default system prompt, then the turns)."""


@register_adapter
class Qwen2_5_VLHF(QwenAdapter):
    """Qwen2.5-VL: one prompt slot per video, temporal positions in seconds (tokens_per_second)."""

    model_class = "Qwen2_5_VLForConditionalGeneration"
    model_types = ("qwen2_5_vl",)
    seconds_per_position = True
    frame_defaults = FrameSettings(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=128 * 28 * 28,
                                   max_pixels=28 * 28 * 768, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    """Qwen2VLVideoProcessor's defaults."""

    def video_pieces(self, question: str, frames: int, times: FrameTimes | None) -> list[PromptPiece]:
        ids = self.template_ids(question, "video")
        at = ids.index(self.tokenizer.convert_tokens_to_ids(PLACEHOLDERS["video"]))
        return [ids[:at], VisualSlot(0, frames), ids[at + 1:]]

    def video_extras(self, times: list[FrameTimes | None]) -> dict[str, torch.Tensor]:
        """second_per_grid_ts: seconds per temporal patch, temporal_patch_size / sampled fps."""
        temporal = self.frame_settings.temporal_patch_size
        return {"second_per_grid_ts": torch.tensor([temporal / (t or FrameTimes.assumed(1)).sampled_fps
                                                    for t in times])}

    # ----- tiny spec ---------------------------------------------------------------------------------------------
    @classmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        """A ViT whose last block has full attention (as the hub's), windows of 2 x 2 merged tokens in the others."""
        from transformers import Qwen2_5_VLConfig

        vision = parts.clip
        head_dim = parts.text["hidden_size"] // parts.text["num_attention_heads"]
        text = dict(parts.text, model_type="qwen2_5_vl_text",
                    rope_scaling={"type": "mrope", "mrope_section": mrope_sections(head_dim)})
        depth = vision["num_hidden_layers"]
        return Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=depth, hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
                               num_heads=vision["num_attention_heads"], patch_size=14, spatial_merge_size=2,
                               temporal_patch_size=2, tokens_per_second=2, window_size=56,
                               fullatt_block_indexes=[depth - 1], out_hidden_size=parts.text["hidden_size"]),
            image_token_id=parts.ids["image"], video_token_id=parts.ids["video"],
            vision_start_token_id=parts.ids["vision_start"], vision_end_token_id=parts.ids["vision_end"])

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        """The hub's files, sized down: frames of up to 112 x 112 pixels keep their size rounded to 28."""
        write_qwen_processor(folder, "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor",
                             patch=14, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, image_pixels=(28 * 28, 112 * 112),
                             video_pixels=(28 * 28, 112 * 112), template=CHAT_TEMPLATE)

