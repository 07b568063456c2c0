"""What the two Qwen-VL families (Qwen2.5-VL, Qwen3-VL) share as transformers checkpoints: detection, loading,
frames, prompts, and the processor's inputs built without torchvision.

- Frames: `num_frames` (16 by default) sampled per video, resized and normalised as the checkpoint's video
  processor does (`qwen_frames`): 16 frames are 8 temporal patches, the 8 "frames" a method budgets over, as on
  the 8-frame LLaVA families; an odd count is padded with the last frame, as the processor pads.
- Prompts: the checkpoint's chat template; its one video placeholder becomes the family's slots (`video_pieces`).
- `processor_batch`: what the stock processor returns for decoded videos (or images): input_ids with each
  placeholder expanded to the grid's tokens, left-padded, mm_token_type_ids, the flattened patches and grids
  (and the family's extras, Qwen2.5-VL's second_per_grid_ts). Images go through the checkpoint's own image
  processor on its PIL backend: one temporal patch, the image duplicated.
Not an adapter itself (nothing registers it), so the two family files import it.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor

from fastervlm.errors import CheckpointError, FasterVLMError
from fastervlm.frame_times import FrameTimes
from fastervlm.models.base import Modality, PromptPiece, VisualSlot
from fastervlm.models.checkpoint import qwen_vl_parts
from fastervlm.models.hf_base import HFAdapter, write_json
from fastervlm.models.qwen_frames import FrameSettings, even_frames, patchify, prepare_frames, read_frame_settings
from fastervlm.models.qwen_stream import QwenStream

PLACEHOLDERS = {"video": "<|video_pad|>", "image": "<|image_pad|>"}
TOKEN_TYPES = {"image": 1, "video": 2}
"""mm_token_type_ids of the placeholders (text is 0), as Qwen's processors mark them."""


class QwenAdapter(HFAdapter):
    """A Qwen-VL checkpoint: videos (and, through `fastervlm.apply` and `processor_inputs`, images)."""

    media = "video"
    default_frames = 16
    frame_defaults: ClassVar[FrameSettings]
    """The video processor class's own defaults, under the checkpoint's saved settings."""
    seconds_per_position: ClassVar[bool] = False
    """Videos: t advances by tokens_per_second per second (Qwen2.5-VL) rather than 1 per slot."""
    slot_per_frame: ClassVar[bool] = False
    checkpoint_parts = staticmethod(qwen_vl_parts)
    frame_settings: FrameSettings
    path: Path

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """The model_type with a vision_config (hub configs of Qwen2.5-VL keep the text settings at the top)."""
        return config.get("model_type") in cls.model_types and "vision_config" in config

    @classmethod
    def streams(cls, model: nn.Module) -> list[QwenStream]:
        config = model.config
        per_second = config.vision_config.tokens_per_second if cls.seconds_per_position else None
        return [QwenStream("video", "pixel_values_videos", "video_grid_thw", config.video_token_id, model.model,
                           cls.slot_per_frame, per_second),
                QwenStream("image", "pixel_values", "image_grid_thw", config.image_token_id, model.model, False)]

    @classmethod
    def frame_processor(cls, path: Path) -> Any:
        """The checkpoint's video processor settings applied without torchvision (`qwen_frames`)."""
        settings = read_frame_settings(path, cls.frame_defaults)
        return lambda frames: prepare_frames(np.stack(frames), settings)

    @classmethod
    def around(cls, model: nn.Module, path: Path, *, keep_cls: bool = False, num_frames: int | None = None) -> HFAdapter:
        adapter = super().around(model, path, keep_cls=keep_cls, num_frames=num_frames)
        adapter.frame_settings, adapter.path = read_frame_settings(path, cls.frame_defaults), path
        return adapter

    def display_frames(self, pixels: torch.Tensor) -> np.ndarray:
        """The first frame of each temporal patch (a method's "frame"), as resized, the normalisation undone."""
        pixels = even_frames(pixels, self.frame_settings.temporal_patch_size)[:: self.frame_settings.temporal_patch_size]
        mean, std = self.frame_settings.image_mean, self.frame_settings.image_std
        rgb = pixels.detach().float().cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        return (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    # ----- prompts -----------------------------------------------------------------------------------------------
    @abstractmethod
    def video_pieces(self, question: str, frames: int, times: FrameTimes | None) -> list[PromptPiece]:
        """The prompt of a video of `frames` temporal patches: text ids and the family's slots."""

    def prompt(self, question: str, visual: Any = None) -> list[PromptPiece]:
        if visual is None:
            return self.video_pieces(question, math.ceil(self.num_frames / self.frame_settings.temporal_patch_size),
                                     None)
        return self.video_pieces(question, len(visual.frames), getattr(visual, "times", None))

    def template_ids(self, question: str, media: Modality, replace: str | None = None) -> list[int]:
        """The chat template's ids for one question on one video or image; `replace` stands for its placeholder."""
        messages = [{"role": "user", "content": [{"type": media}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  add_generation_prompt=True, tokenize=False)
        placeholder = PLACEHOLDERS[media]
        if text.count(placeholder) != 1:
            raise CheckpointError(f"the {self.family} chat template gives {text.count(placeholder)} {placeholder} "
                                  "for one input, not one; use the checkpoint's own chat template.")
        return self.tokenizer(text if replace is None else text.replace(placeholder, replace)).input_ids

    def split_at(self, ids: list[int], media: Modality) -> list[PromptPiece]:
        """Text ids cut at each placeholder, which becomes the slot of the next temporal patch(es)."""
        token = self.tokenizer.convert_tokens_to_ids(PLACEHOLDERS[media])
        pieces: list[PromptPiece] = []
        start = 0
        for frame, at in enumerate(i for i, value in enumerate(ids) if value == token):
            pieces += [ids[start:at], VisualSlot(frame, 1)]
            start = at + 1
        return [*pieces, ids[start:]]

    # ----- the processor's inputs --------------------------------------------------------------------------------
    def video_extras(self, times: list[FrameTimes | None]) -> dict[str, torch.Tensor]:
        """Inputs the family's processor adds for videos (Qwen2.5-VL: second_per_grid_ts)."""
        return {}

    def processor_batch(self, questions: list[str], *, videos: list[Any] | None = None,
                        images: list[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        patch, temporal, merge = (self.frame_settings.patch_size, self.frame_settings.temporal_patch_size,
                                  self.frame_settings.merge_size)
        if videos is not None:
            flat, grids = zip(*(patchify(frames.pixels, patch, temporal, merge) for frames in videos))
            media: Modality = "video"
            pieces = [self.video_pieces(q, grid[0], f.times) for q, grid, f in zip(questions, grids, videos)]
            out = {"pixel_values_videos": torch.cat(flat), "video_grid_thw": torch.tensor(grids),
                   **self.video_extras([f.times for f in videos])}
        else:
            media = "image"
            processed = _image_processor(self.path)(images=list(images), return_tensors="pt")
            grids = processed["image_grid_thw"].tolist()
            pieces = [self.split_at(self.template_ids(q, "image"), "image") for q in questions]
            out = {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}
        token = self.tokenizer.convert_tokens_to_ids(PLACEHOLDERS[media])
        rows = [[t for piece in row for t in ([token] * (piece.count * (h // merge) * (w // merge))
                                              if isinstance(piece, VisualSlot) else piece)]
                for row, (_, h, w) in zip(pieces, grids)]
        ids, mask = _left_padded(rows, self.tokenizer.pad_token_id or 0)
        types = torch.where(ids == token, TOKEN_TYPES[media], 0) * mask
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "mm_token_type_ids": types.to(self.device),
                **{key: value.to(self.device) for key, value in out.items()}}

    @classmethod
    def stock_positions(cls, model: nn.Module, call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stock (t, h, w) positions of the call's whole prompt and its rope deltas (`get_rope_index`)."""
        if call.get("mm_token_type_ids") is None:
            raise FasterVLMError("with fastervlm applied, pass mm_token_type_ids as the processor returns it: the "
                                 "kept tokens take their stock M-RoPE positions, computed from it.")
        extra = {key: call.get(key) for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
                 if call.get(key) is not None}
        return model.model.get_rope_index(call["input_ids"], call["mm_token_type_ids"],
                                          attention_mask=call.get("attention_mask"), **extra)

    @classmethod
    def continue_from(cls, model: nn.Module, rope_deltas: torch.Tensor) -> None:
        """The stock forward's decoding steps take position = tokens so far + rope_deltas: the stock delta plus the
        tokens pruning removed keeps them where the unpruned prompt's steps would be."""
        model.model.rope_deltas = rope_deltas


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def _image_processor(path: Path) -> Any:
    """The checkpoint's image processor on its PIL backend (no torchvision)."""
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the image processor in {path} ({err}); copy preprocessor_config.json "
                              "from the checkpoint.") from err


def mrope_sections(head_dim: int) -> list[int]:
    """An M-RoPE split of head_dim / 2 frequencies into (t, h, w), t taking the rest."""
    quarter = head_dim // 8
    return [head_dim // 2 - 2 * quarter, quarter, quarter]


def write_qwen_processor(folder: Path, processor: str, image: str, video: str, *, patch: int,
                         mean: tuple[float, ...], std: tuple[float, ...], image_pixels: tuple[int, int],
                         video_pixels: tuple[int, int], template: str) -> None:
    """preprocessor_config.json, video_preprocessor_config.json and chat_template.json as Qwen's hub repos have them."""
    common = {"processor_class": processor, "patch_size": patch, "temporal_patch_size": 2, "merge_size": 2,
              "image_mean": list(mean), "image_std": list(std), "do_resize": True, "do_rescale": True,
              "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True, "resample": 3}
    write_json(folder / "preprocessor_config.json", {"image_processor_type": image, **common,
               "size": {"shortest_edge": image_pixels[0], "longest_edge": image_pixels[1]}})
    write_json(folder / "video_preprocessor_config.json", {"video_processor_type": video, **common,
               "size": {"shortest_edge": video_pixels[0], "longest_edge": video_pixels[1]}, "do_sample_frames": False})
    write_json(folder / "chat_template.json", {"chat_template": template})
