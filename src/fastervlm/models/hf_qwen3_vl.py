"""Qwen3-VL in transformers' format (Qwen/Qwen3-VL-{2B,4B,8B,32B}-Instruct, Qwen3VLForConditionalGeneration).

What differs from Qwen2.5-VL: 16-pixel patches (sides multiples of 32) and a pixel budget for the whole clip (frames
x height x width); no window attention; DeepStack: merger outputs of a few middle ViT blocks are added to the hidden
states of the LLM's first layers at the visual positions; and each temporal patch has its own prompt slot, preceded
by its timestamp: `<{t:.1f} seconds><|vision_start|>` + tokens + `<|vision_end|>` (the mean time of the patch's two
frames), all inside the template's own <|vision_start|> ... <|vision_end|>, as the stock processor expands it.
M-RoPE gives each slot t = 0 and (h, w) its grid; what follows a slot continues from its start + max(rows, cols).
Here DeepStack features are `side_features`, pruned with the same indices as the tokens they belong to, and
`forward_llm` hands them to the language model (`visual_pos_masks`, `deepstack_visual_embeds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastervlm.frame_times import FrameTimes
from fastervlm.models.base import LLMSideInputs, PromptPiece, register_adapter
from fastervlm.models.hf_base import TinyParts
from fastervlm.models.qwen_base import PLACEHOLDERS, QwenAdapter, mrope_sections, write_qwen_processor
from fastervlm.models.qwen_frames import FrameSettings

HALF = (0.5, 0.5, 0.5)
"""Qwen3-VL's pixel statistics (mean and std)."""
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}{%- if content is string %}{{- content }}{%- else %}"
    "{%- for item in content %}{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- set content = render_content(message.content, true) %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""The chat template of the Qwen3-VL Instruct checkpoints for conversations without tools (no default system
prompt)."""


@register_adapter
class Qwen3VLHF(QwenAdapter):
    """Qwen3-VL: one prompt slot per temporal patch after its timestamp, DeepStack features beside the tokens."""

    model_class = "Qwen3VLForConditionalGeneration"
    model_types = ("qwen3_vl",)
    slot_per_frame = True
    frame_defaults = FrameSettings(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=128 * 32 * 32,
                                   max_pixels=32 * 32 * 768, image_mean=HALF, image_std=HALF, max_video_tokens=768,
                                   whole_video_budget=True)
    """Qwen3VLVideoProcessor's defaults."""

    def video_pieces(self, question: str, frames: int, times: FrameTimes | None) -> list[PromptPiece]:
        """The template's video placeholder expanded as the stock processor does, each frame's tokens a slot."""
        stamps = timestamps(times or FrameTimes.assumed(frames * self.frame_settings.temporal_patch_size),
                            self.frame_settings.temporal_patch_size)[:frames]
        expanded = "".join(f"<{stamp:.1f} seconds><|vision_start|>{PLACEHOLDERS['video']}<|vision_end|>"
                           for stamp in stamps)
        return self.split_at(self.template_ids(question, "video", replace=expanded), "video")

    def forward_llm(self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                    side: LLMSideInputs | None = None) -> torch.Tensor:
        """The language model with the DeepStack features of the visual tokens, then the head on the last position."""
        deep = {} if side is None else {"visual_pos_masks": side.visual_mask,
                                        "deepstack_visual_embeds": list(side.features)}
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                              position_ids=positions, cache=cache, use_cache=True, **deep)
        return self.model.lm_head(out.last_hidden_state[:, -1])

    # ----- tiny spec ---------------------------------------------------------------------------------------------
    @classmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        """DeepStack from the first two of three ViT blocks (into the LLM's first two layers), interleaved M-RoPE."""
        from transformers import Qwen3VLConfig

        vision, hidden = parts.clip, parts.text["hidden_size"]
        head_dim = hidden // parts.text["num_attention_heads"]
        text = dict(parts.text, model_type="qwen3_vl_text", head_dim=head_dim,
                    rope_scaling={"rope_type": "default", "mrope_section": mrope_sections(head_dim),
                                  "mrope_interleaved": True, "rope_theta": 5000000.0})
        return Qwen3VLConfig(
            text_config=text,
            vision_config=dict(depth=vision["num_hidden_layers"], hidden_size=vision["hidden_size"],
                               intermediate_size=vision["intermediate_size"], num_heads=vision["num_attention_heads"],
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                               num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
            image_token_id=parts.ids["image"], video_token_id=parts.ids["video"],
            vision_start_token_id=parts.ids["vision_start"], vision_end_token_id=parts.ids["vision_end"])

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        """The hub's files, sized down: a 16-frame clip of up to 96 x 96 pixels keeps its size rounded to 32."""
        write_qwen_processor(folder, "Qwen3VLProcessor", "Qwen2VLImageProcessorFast", "Qwen3VLVideoProcessor",
                             patch=16, mean=HALF, std=HALF, image_pixels=(32 * 32, 128 * 128),
                             video_pixels=(32 * 32 * 2, 16 * 96 * 96), template=CHAT_TEMPLATE)


def timestamps(times: FrameTimes, temporal: int) -> list[float]:
    """Each temporal patch's time, the mean of its first and last frame's (the last frame repeated to fill it), as
    Qwen3-VL's processor writes it into the prompt."""
    seconds = times.seconds
    seconds += [seconds[-1]] * (-len(seconds) % temporal)
    return [(seconds[i] + seconds[i + temporal - 1]) / 2 for i in range(0, len(seconds), temporal)]
