"""Original-format Video-LLaVA checkpoints (LanguageBind/Video-LLaVA-7B + LanguageBind_Video_merge).

Everything specific to this family lives here (the encoder module itself is in languagebind.py): detecting the
checkpoint, the LanguageBind video transform, loading the Llama (transformers' own LlamaForCausalLM and
tokenizer), the mlp2x_gelu projector from the LLM shards and the LanguageBind tower, and the llava_v1 prompt with
one placeholder per frame. The engine does the rest.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights
from transformers.models.clip.modeling_clip import CLIPAttention

from fastervlm.errors import CheckpointError
from fastervlm.models.base import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, EagerExtraction, ModelAdapter, PromptPiece,
                                   VisualSlot, register_adapter)
from fastervlm.models.checkpoint import LLAMA_SIZES, Part, check_parts, read_config, unbuildable_config
from fastervlm.models.grid_stream import GridStream
from fastervlm.models.languagebind import LanguageBindVideoTower, load_video_tower
from fastervlm.models.languagebind_reference import eager_tower_pass, feature_select
from fastervlm.models.loading import (default_dtype, generation_defaults, load_tokenizer, neutral_generation_config,
                                      placement, quiet_transformers)
from fastervlm.models.weights import load_into, load_prefix, weight_files

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200  # the original's marker id for a placeholder in the token list
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PROJECTOR_PREFIX = "model.mm_projector."
CHECKPOINT_PARTS = (Part(None, (*LLAMA_SIZES, "max_position_embeddings", "mm_hidden_size"), {
    "model.embed_tokens.weight": ("vocab_size", "hidden_size"),
    f"{PROJECTOR_PREFIX}0.weight": ("hidden_size", "mm_hidden_size"),
}),)
"""The flat Llama config.json of an original checkpoint, with the tensors that show its widths (the tower's copies
in the shards are not read)."""


def languagebind_transform(frames: np.ndarray, size: int = 224, flip: bool = False) -> torch.Tensor:
    """The original video transform (LanguageBind's) on (T, H, W, 3) uint8 frames, giving (T, 3, size, size) float32.

    Order as the original: /255, normalise (OpenAI CLIP statistics), short side -> size (bilinear,
    align_corners=False, no antialias), centre crop, then a horizontal flip of the whole clip when `flip` (the
    original flips at random, p=0.5). The original works on (C, T, H, W) with C as the batch; each (frame,
    channel) plane is resized on its own either way, so this (T, C, H, W) layout gives the same numbers.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    h, w = x.shape[-2:]
    new_size = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
    x = F.interpolate(x, size=new_size, mode="bilinear", align_corners=False)
    top, left = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    return (x.flip(-1) if flip else x).contiguous()


def llava_v1_prompt(question: str, num_frames: int) -> str:
    """The llava_v1 conversation with one <image> placeholder per frame, adjacent, before the question."""
    return f"{SYSTEM_PROMPT} USER: {IMAGE_PLACEHOLDER * num_frames}\n{question} ASSISTANT:"


def tokenize_with_placeholders(tokenizer: Any, prompt: str) -> list[int]:
    """Tokenise each text chunk between placeholders on its own (as the original does), keep the first BOS
    only, and put one IMAGE_TOKEN_INDEX where each placeholder was."""
    ids: list[int] = []
    for position, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        chunk_ids = tokenizer(chunk).input_ids
        if position > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            if chunk_ids and chunk_ids[0] == tokenizer.bos_token_id:
                chunk_ids = chunk_ids[1:]
        ids.extend(chunk_ids)
    return ids


def build_projector(config: dict[str, Any]) -> nn.Module:
    """mlp2x_gelu: Linear(mm_hidden -> hidden), exact GELU, Linear(hidden -> hidden); keys 0.* and 2.*."""
    kind = config.get("mm_projector_type", "linear")
    if kind != "mlp2x_gelu":
        raise CheckpointError(f"mm_projector_type {kind!r} is not supported (Video-LLaVA uses 'mlp2x_gelu').")
    hidden, vision = config["hidden_size"], config["mm_hidden_size"]
    return nn.Sequential(nn.Linear(vision, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class LanguageBindStream(GridStream):
    """The videos of an original checkpoint: the LanguageBind tower to mm_vision_select_layer, then the projector.
    It also reaches its [CLS] scores the original's way (`eager_extraction`, bench's reference row)."""

    modality = "video"
    has_cls = True
    first_token_fed = False

    def __init__(self, tower: LanguageBindVideoTower, projector: nn.Module, select_layer: int) -> None:
        self.tower, self.projector, self.select_layer = tower, projector, select_layer
        tower.feature_layer_index(select_layer)  # a clear error now for a select layer the tower does not have

    @property
    def tokens_per_frame(self) -> int:
        return self.tower.num_patches

    def feature_attention(self) -> CLIPAttention:
        return self.tower.feature_attention(self.select_layer)

    def hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixels, self.select_layer)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.projector(tokens)

    @property
    def layers_run(self) -> int:
        return self.tower.feature_layer_index(self.select_layer) + 1

    def eager_extraction(self, pixels: torch.Tensor) -> EagerExtraction:
        result = eager_tower_pass(self.tower, pixels)
        features, scores = feature_select(self.tower, result, self.select_layer)
        return EagerExtraction(features, scores, result.attention_bytes, self.tower.config.num_hidden_layers)


@register_adapter
class VideoLlavaAdapter(ModelAdapter):
    """LlavaLlamaForCausalLM checkpoints with a LanguageBind video tower."""

    family = "video-llava"
    media = "video"

    def __init__(
        self,
        llm: LlamaForCausalLM,
        projector: nn.Module,
        tower: LanguageBindVideoTower,
        tokenizer: Any,
        config: dict[str, Any],
        generation: GenerationConfig,
    ) -> None:
        if config.get("mm_vision_select_feature", "patch") != "patch":
            raise CheckpointError("only mm_vision_select_feature 'patch' is supported (the original video setting).")
        self.llm, self.projector, self.tower, self.tokenizer = llm, projector, tower, tokenizer
        self.decoder, self.llm_config = llm.model, llm.config
        self.config, self.generation_defaults = config, generation
        self.stream = LanguageBindStream(tower, projector, int(config.get("mm_vision_select_layer", -2)))
        self.num_frames = tower.num_frames
        self.device = next(llm.parameters()).device
        self.dtype = next(llm.parameters()).dtype

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return "LlavaLlamaForCausalLM" in (config.get("architectures") or []) or "mm_video_tower" in config

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        video_tower: str | Path | None = None,
    ) -> VideoLlavaAdapter:
        config = read_config(path)
        check_parts(path, config, CHECKPOINT_PARTS)
        dtype = dtype or default_dtype(config.get("torch_dtype") or config.get("dtype"), device)
        tower = load_video_tower(_tower_dir(path, config, video_tower), device=device, dtype=dtype)
        if config.get("mm_hidden_size") != tower.config.hidden_size:
            raise CheckpointError(
                f"{path}: mm_hidden_size {config.get('mm_hidden_size')} does not match the video tower's width "
                f"{tower.config.hidden_size}; pass the tower this checkpoint was trained with (--video-tower)."
            )
        llm = _load_llama(path, config, device, dtype)
        with no_init_weights():  # every weight is loaded (strictly) just below
            projector = build_projector(config).to(device=device, dtype=dtype)
        load_into(projector, load_prefix(path, PROJECTOR_PREFIX, strip=True), path)
        tokenizer = load_tokenizer(path, vocab_size=llm.config.vocab_size, config=llm.config)
        return cls(llm, projector.eval(), tower, tokenizer, config, generation_defaults(path))

    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        return languagebind_transform(frames, size=self.tower.config.image_size, flip=flip)

    def prompt(self, question: str, visual: Any = None) -> list[PromptPiece]:
        """llava_v1, each text chunk tokenised on its own, one slot per frame where the original has <image>."""
        pieces: list[PromptPiece] = [[]]
        for token in tokenize_with_placeholders(self.tokenizer, llava_v1_prompt(question, self.num_frames)):
            if token == IMAGE_TOKEN_INDEX:
                frame = sum(isinstance(piece, VisualSlot) for piece in pieces)
                pieces += [VisualSlot(frame, 1), []]
            else:
                pieces[-1].append(token)
        return pieces

    def decode(self, ids: list[int]) -> str:
        return super().decode(ids).removesuffix("</s>").strip()


# ----- loading helpers -----------------------------------------------------------------------------------------
def _tower_dir(path: Path, config: dict[str, Any], video_tower: str | Path | None) -> Path:
    """--video-tower, else mm_video_tower when it is a local folder (relative paths from the checkpoint)."""
    if video_tower is not None:
        tower = Path(video_tower).expanduser()
        if not tower.is_dir():
            raise CheckpointError(f"--video-tower {tower} is not a folder: pass the LanguageBind_Video_merge checkpoint folder.")
        return tower
    named = config.get("mm_video_tower")
    fix = "download LanguageBind/LanguageBind_Video_merge and pass its folder with --video-tower."
    if not named:
        raise CheckpointError(f"{path}/config.json names no video tower (mm_video_tower); {fix}")
    candidate = path / Path(named).expanduser()  # an absolute path stays itself
    if not candidate.is_dir():
        raise CheckpointError(f"{path}/config.json names the video tower {named!r}, which is not a local folder; {fix}")
    return candidate.resolve()


# Llama settings that transformers 5 takes as arguments, not fields: it folds them into rope_parameters.
_LEGACY_ROPE_KEYS = ("rope_theta", "rope_scaling")


def llama_config(config: dict[str, Any], **overrides: Any) -> LlamaConfig:
    """The Llama part of an original-format config.json: LlamaConfig's fields plus the legacy RoPE settings;
    the mm_* fields, `architectures` (LlavaLlamaForCausalLM) and `model_type` ("llava") are left out."""
    kept = {k: v for k, v in config.items()
            if (k in LlamaConfig.__dataclass_fields__ or k in _LEGACY_ROPE_KEYS) and k not in ("architectures", "model_type")}
    return LlamaConfig(**kept, **overrides)


def _load_llama(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """transformers' own Llama from the checkpoint's shards; the projector and tower copies in them are skipped."""
    from huggingface_hub.errors import StrictDataclassError

    weight_files(path)  # a clear error when the weights are missing
    try:
        llama = llama_config(config)
    except (ValueError, TypeError, StrictDataclassError) as err:  # another field of the wrong type (rms_norm_eps: "x")
        raise unbuildable_config(path, err) from err
    with quiet_transformers():  # the skipped mm_projector / tower keys are expected, not news
        llm, info = LlamaForCausalLM.from_pretrained(
            path, config=llama, dtype=dtype, attn_implementation="sdpa", output_loading_info=True, **placement(device)
        )
    missing = [k for k in info.get("missing_keys", []) if "rotary_emb" not in k]
    if missing:
        raise CheckpointError(f"{path} lacks LLM weights {sorted(missing)[:5]}; finish the download or check the folder.")
    llm.generation_config = neutral_generation_config(llama)
    return llm.to(device).eval()
