"""The LanguageBind video tower: temporal attention, stopping at the feature layer, and the cheap [CLS] row.

The reference here is written independently of the library: explicit softmax attention matrices, every layer
run, every attention map kept (what the original returns with output_attentions=True).
"""

from __future__ import annotations

import torch

from fastervlm.engine import encode
from fastervlm.methods.base import CLS_SCORES


def eager_attention(attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full attention with the probabilities materialised: (B, S, C) -> output, probs (B, H, S, S)."""
    b, s, c = x.shape
    h, d = attention.num_heads, attention.head_dim
    q = attention.q_proj(x).reshape(b, s, h, d).permute(0, 2, 1, 3)
    k = attention.k_proj(x).reshape(b, s, h, d).permute(0, 2, 1, 3)
    v = attention.v_proj(x).reshape(b, s, h, d).permute(0, 2, 1, 3)
    probs = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    return attention.out_proj((probs @ v).permute(0, 2, 1, 3).reshape(b, s, c)), probs


def reference_tower(tower, pixels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's hidden state and spatial attention map, as the original computes them."""
    vm = tower.vision_model
    frames = pixels.shape[1]
    x = vm.pre_layrnorm(vm.embeddings(pixels.flatten(0, 1)))
    hidden, maps = [x], []
    for layer in vm.encoder.layers:
        bt, n, c = x.shape
        per_position = x.reshape(bt // frames, frames, n, c).permute(0, 2, 1, 3).reshape(-1, frames, c)
        per_position = per_position + layer.temporal_embedding[:, :frames]
        per_position = per_position + eager_attention(layer.temporal_attn, layer.temporal_layer_norm1(per_position))[0]
        x = per_position.reshape(bt // frames, n, frames, c).permute(0, 2, 1, 3).reshape(bt, n, c)
        out, probs = eager_attention(layer.self_attn, layer.layer_norm1(x))
        x = x + out
        x = x + layer.mlp(layer.layer_norm2(x))
        hidden.append(x)
        maps.append(probs)
    return hidden, maps


def _pixels(pipeline, seed: int = 0) -> torch.Tensor:
    size = pipeline.adapter.tower.config.image_size
    return torch.randn(1, pipeline.num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_features_and_cls_row_equal_the_full_eager_computation(tiny_pipeline) -> None:
    tower = tiny_pipeline.adapter.tower
    pixels = _pixels(tiny_pipeline)
    (encoded,) = encode(tiny_pipeline.adapter.stream, pixels, frozenset({CLS_SCORES}))
    features = encoded.features[None]
    hidden, maps = reference_tower(tower, pixels)

    expected_features = hidden[-2][:, 1:].unflatten(0, (1, tiny_pipeline.num_frames))
    torch.testing.assert_close(features, expected_features, atol=1e-5, rtol=1e-5)
    expected_scores = maps[-2][:, :, 0, 1:].mean(dim=1)  # CLS query row, CLS key dropped, no renormalising
    scores = encoded.cls_scores
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    assert scores.shape == (tiny_pipeline.num_frames, tiny_pipeline.num_patches)
    assert torch.all(scores.sum(-1) < 1.0)  # the CLS->CLS share is missing, not renormalised away


@torch.no_grad()
def test_layers_after_the_feature_layer_never_run(tiny_pipeline) -> None:
    layers = tiny_pipeline.adapter.tower.vision_model.encoder.layers
    calls: list[int] = []
    handles = [layer.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        tiny_pipeline.adapter.tower(_pixels(tiny_pipeline), select_layer=-2)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == list(range(len(layers) - 1))


@torch.no_grad()
def test_temporal_attention_mixes_frames(tiny_pipeline) -> None:
    tower = tiny_pipeline.adapter.tower
    pixels = _pixels(tiny_pipeline)
    changed = pixels.clone()
    changed[:, 3] = torch.randn_like(changed[:, 3])
    before, after = tower(pixels)[:, :, 1:], tower(changed)[:, :, 1:]
    assert not torch.allclose(before[:, 0], after[:, 0], atol=1e-4), "frame 0 must see frame 3 through time attention"

    for layer in tower.vision_model.encoder.layers:
        layer.add_time_attn = False
    try:
        plain_before, plain_after = tower(pixels)[:, :, 1:], tower(changed)[:, :, 1:]
    finally:
        for layer in tower.vision_model.encoder.layers:
            layer.add_time_attn = True
    torch.testing.assert_close(plain_before[:, 0], plain_after[:, 0])  # without it, frames are independent
