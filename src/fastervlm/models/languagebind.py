"""The LanguageBind video encoder (LanguageBind_Video_merge) with its temporal attention, on SDPA.

A CLIP ViT whose every layer first adds a per-layer temporal embedding and runs attention over the frames at
each token position, then the usual spatial attention and MLP (as the original LanguageBind code). transformers' Video-LLaVA port drops
the temporal part, so this file builds the encoder from transformers' CLIP pieces plus those weights.

It runs only up to the feature layer (select layer -2 by default): the layers after it are never computed. All
attention is SDPA; the engine reads the feature layer's [CLS] query and keys from its q_proj/k_proj (QKCapture),
so the [CLS] attention row costs one small product instead of a full attention map.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig
from transformers.initialization import no_init_weights
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPMLP, CLIPVisionEmbeddings

from fastervlm.errors import CheckpointError, FasterVLMError
from fastervlm.models.base import feature_layer_index
from fastervlm.models.checkpoint import VISION_SIZES, Part, check_parts, positive_whole_number, read_config
from fastervlm.models.weights import load_into, load_prefix

WEIGHT_PREFIX = "vision_model."


def attend(attention: CLIPAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention with `attention`'s weights on SDPA (q_proj/k_proj are called as modules, so the
    engine's QKCapture sees what they compute)."""
    batch, length, _ = x.shape
    heads = (batch, length, attention.num_heads, attention.head_dim)
    q = attention.q_proj(x).view(heads).transpose(1, 2)
    k = attention.k_proj(x).view(heads).transpose(1, 2)
    v = attention.v_proj(x).view(heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, scale=attention.scale)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class LanguageBindEncoderLayer(nn.Module):
    """Temporal embedding + temporal attention (when the config asks for them), then a standard CLIP layer."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.add_time_attn = bool(getattr(config, "add_time_attn", False))
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        if self.add_time_attn:
            self.temporal_embedding = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden_size))
            self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.temporal_attn = CLIPAttention(config)

    def temporal(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B*T, N, C) -> same, after the frame embedding and attention across frames at each position."""
        bt, tokens, width = x.shape
        y = x.view(bt // frames, frames, tokens, width).transpose(1, 2).reshape(-1, frames, width)
        if frames != 1:
            y = y + self.temporal_embedding[:, :frames]
        y = y + attend(self.temporal_attn, self.temporal_layer_norm1(y))
        return y.view(bt // frames, tokens, frames, width).transpose(1, 2).reshape(bt, tokens, width)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if self.add_time_attn:
            x = self.temporal(x, frames)
        x = x + attend(self.self_attn, self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class LanguageBindEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LanguageBindEncoderLayer(config) for _ in range(config.num_hidden_layers))


class LanguageBindVisionModel(nn.Module):
    """Module names match the checkpoint's `vision_model.*` keys (including the original's 'pre_layrnorm')."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = LanguageBindEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # pooled output only; unused


class LanguageBindVideoTower(nn.Module):
    """The video tower: pixels (B, T, 3, S, S) -> patch features of the feature layer, plus its [CLS] q/k."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = LanguageBindVisionModel(config)

    @property
    def num_frames(self) -> int:
        return int(self.config.num_frames)

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    def feature_layer_index(self, select_layer: int) -> int:
        """0-based index of the layer whose output is hidden_states[select_layer] (-2 -> the penultimate layer)."""
        return feature_layer_index(self.config.num_hidden_layers, select_layer, "mm_vision_select_layer")

    def forward(self, pixels: torch.Tensor, select_layer: int = -2) -> torch.Tensor:
        """hidden_states[select_layer] of (B, T, 3, S, S) pixels: (B, T, 1 + N, C), [CLS] first.

        Layers after the feature layer are not run.
        """
        batch, frames = pixels.shape[:2]
        size = self.config.image_size
        if pixels.ndim != 5 or pixels.shape[2:] != (3, size, size):
            raise FasterVLMError(f"the video tower takes pixels of shape (B, T, 3, {size}, {size}), got {tuple(pixels.shape)}.")
        if self.vision_model.encoder.layers[0].add_time_attn and frames != self.num_frames:
            raise FasterVLMError(
                f"this LanguageBind tower was trained on {self.num_frames} frames and its temporal embedding has "
                f"{self.num_frames} slots, but got {frames} frames; sample {self.num_frames} frames per video."
            )
        x = self.vision_model.embeddings(pixels.flatten(0, 1).to(self.vision_model.pre_layrnorm.weight.dtype))
        x = self.vision_model.pre_layrnorm(x)
        for layer in self.vision_model.encoder.layers[: self.feature_layer_index(select_layer) + 1]:
            x = layer(x, frames)
        return x.unflatten(0, (batch, frames))

    def feature_attention(self, select_layer: int = -2) -> CLIPAttention:
        """The spatial self-attention of the feature layer (its q/k give the [CLS] row)."""
        return self.vision_model.encoder.layers[self.feature_layer_index(select_layer)].self_attn


def vision_config_from_dict(vision: dict, source: str = "vision_config") -> CLIPVisionConfig:
    """A CLIPVisionConfig with every size read from the tower's vision_config (nothing assumed)."""
    missing = [key for key in VISION_SIZES if key not in vision]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)}; re-download the tower.")
    if vision.get("add_time_attn") and "num_frames" not in vision:
        raise CheckpointError(f"{source} sets add_time_attn but not num_frames; re-download the tower.")
    frames = vision.get("num_frames", 1)
    if not positive_whole_number(frames):
        raise CheckpointError(f"{source} has num_frames = {frames!r}, not a positive whole number; re-download the tower.")
    return CLIPVisionConfig(**{k: v for k, v in vision.items() if k not in ("architectures", "model_type")})


TOWER_PARTS = (Part("vision_config", VISION_SIZES, {
    f"{WEIGHT_PREFIX}embeddings.patch_embedding.weight": ("hidden_size", None, "patch_size", "patch_size")}),)
"""A LanguageBind tower's config.json (a CLIPModel's: the text model's sizes are not read) and the tensor that
shows its width."""


def vision_config_from(tower_dir: Path) -> CLIPVisionConfig:
    """The vision_config of a LanguageBind tower folder's config.json, checked against the tower's weights."""
    config = read_config(tower_dir, flag="--video-tower")
    if not isinstance(config.get("vision_config"), dict):
        raise CheckpointError(f"{tower_dir}/config.json has no vision_config: is this a LanguageBind video tower?")
    check_parts(tower_dir, config, TOWER_PARTS)
    return vision_config_from_dict(config["vision_config"], f"{tower_dir}/config.json vision_config")


def load_video_tower(tower_dir: Path, *, device: torch.device, dtype: torch.dtype) -> LanguageBindVideoTower:
    """Build the tower from its config and load only its `vision_model.*` weights (the text model is skipped).

    The tower is built without random init (every weight is loaded, strictly) and on its device and dtype
    first, so the weights go from the file straight there, with no fp32 copy of the tower held on the CPU.
    """
    config = vision_config_from(tower_dir)
    with no_init_weights():
        tower = LanguageBindVideoTower(config).to(device=device, dtype=dtype)
    state = load_prefix(tower_dir, WEIGHT_PREFIX)
    # transformers releases before 4.31 saved CLIP's position_ids (an arange) as a weight; the embeddings build it.
    state.pop(f"{WEIGHT_PREFIX}embeddings.position_ids", None)
    frames_in_weights = state.get(f"{WEIGHT_PREFIX}encoder.layers.0.temporal_embedding")
    if frames_in_weights is not None and frames_in_weights.shape[1] != config.num_frames:
        raise CheckpointError(
            f"{tower_dir}: config.json says num_frames={config.num_frames} but the temporal embeddings hold "
            f"{frames_in_weights.shape[1]} frames; use the config.json that came with these weights."
        )
    load_into(tower, state, tower_dir)
    return tower.eval()
