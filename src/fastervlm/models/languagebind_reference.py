"""The original's way of getting the [CLS] attention, kept as a yardstick for `fastervlm bench`.

The original calls the LanguageBind tower with `output_attentions=True, output_hidden_states=True` (its [CLS] extraction):
every layer runs, the last one too although its output is never used, in eager attention, and every layer's full
(heads x 257 x 257) attention map and every hidden state are returned and kept; then `feature_select` reads the
features of hidden_states[-2] and the [CLS] row of attentions[-2]. This module does exactly that with the tower's
own modules and weights (transformers' CLIPAttention run in eager mode, as the original's transformers 4.31 ran
it), so the benchmark can show next to our path what that costs, and the tests can check that our cheap [CLS]
row equals the row of the full eager map.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fastervlm.models.languagebind import LanguageBindEncoderLayer, LanguageBindVideoTower


@dataclass
class EagerPass:
    """What the original's tower call returns: hidden states (L + 1 entries, the embedding output first) and
    spatial attention probabilities (L entries), each with a leading (B, T)."""

    hidden_states: list[torch.Tensor]
    attentions: list[torch.Tensor]

    @property
    def attention_bytes(self) -> int:
        """Memory held by the returned attention maps."""
        return sum(a.numel() * a.element_size() for a in self.attentions)


@contextmanager
def _eager_attention(tower: LanguageBindVideoTower) -> Iterator[None]:
    """CLIPAttention.forward dispatches on its config: eager for the duration (our own path never reads it)."""
    config = tower.config
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


def _layer(layer: LanguageBindEncoderLayer, x: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One LanguageBind layer as the original runs it: (B*T, N, C) -> output and the spatial attention map."""
    if layer.add_time_attn:
        videos = x.shape[0] // frames
        across = x.unflatten(0, (videos, frames)).transpose(1, 2).flatten(0, 1)  # (B*N, T, C)
        if frames != 1:
            across = across + layer.temporal_embedding[:, :frames]
        across = across + layer.temporal_attn(layer.temporal_layer_norm1(across))[0]
        x = across.unflatten(0, (videos, -1)).transpose(1, 2).flatten(0, 1)
    attended, probabilities = layer.self_attn(layer.layer_norm1(x))
    x = x + attended
    return x + layer.mlp(layer.layer_norm2(x)), probabilities


@torch.inference_mode()
def eager_tower_pass(tower: LanguageBindVideoTower, pixels: torch.Tensor) -> EagerPass:
    """All layers, eager attention, every hidden state and attention map kept: pixels (B, T, 3, S, S)."""
    batch, frames = pixels.shape[:2]
    vision = tower.vision_model
    x = vision.pre_layrnorm(vision.embeddings(pixels.flatten(0, 1).to(vision.pre_layrnorm.weight.dtype)))
    hidden_states, attentions = [x.unflatten(0, (batch, frames))], []
    with _eager_attention(tower):
        for layer in vision.encoder.layers:
            x, probabilities = _layer(layer, x, frames)
            hidden_states.append(x.unflatten(0, (batch, frames)))
            attentions.append(probabilities.unflatten(0, (batch, frames)))
    return EagerPass(hidden_states, attentions)


def feature_select(tower: LanguageBindVideoTower, result: EagerPass, select_layer: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's feature_select plus the head mean: features (B, T, N, C) of the feature layer without [CLS],
    and that layer's [CLS] row over the patches, CLS->CLS dropped without renormalising, mean over heads (B, T, N)."""
    layer = tower.feature_layer_index(select_layer)
    features = result.hidden_states[layer + 1][:, :, 1:]
    scores = result.attentions[layer][:, :, :, 0, 1:].float().mean(dim=2)
    return features, scores
