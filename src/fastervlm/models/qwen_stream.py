"""The visual stream of the Qwen-VL families (Qwen2.5-VL, Qwen3-VL): what a method chooses among, and what it reads.

- Candidates are the patch merger's outputs: each merges 2 x 2 patches of one temporal patch (2 input frames) into
  one token already in the LLM's space, so `project` is the identity; a "frame" is a temporal patch. The grid
  (rows x cols merged tokens) is the one the processor picked for each input, so N differs from input to input.
- `received_scores`: the attention each merged token receives at the feature layer (the last block, whose output
  the merger reads), mean over heads and over the queries of its attention sequence (its frame in a full-attention
  block), summed over its 4 patches. Read from the block's fused `qkv` output with the vision RoPE applied as the
  block applies it, in chunks of queries (`scoring.received_attention`), the window order of Qwen2.5-VL's tower
  undone; no attention map is formed.
- `patch_keys`: the mean of the 4 patches' keys (before RoPE: what they hold, not where they are), per head.
- `positions`: the stock M-RoPE (t, h, w) of each token relative to the start of its prompt slot, from the
  model's own `get_vision_position_ids`; `position_span` how far a slot shifts what follows it (the stock
  `max(rows, cols)`). `side_features`: Qwen3-VL's DeepStack features, one (T, N, D) set per deep layer.
There is no [CLS] token, so [CLS]-ranking methods need score=received. Not an adapter (nothing registers it).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fastervlm.errors import FasterVLMError
from fastervlm.frame_times import FrameTimes
from fastervlm.methods.base import PATCH_KEYS, PROJECTED, RECEIVED_SCORES, VisualTokens
from fastervlm.models.base import Modality, VisualStream
from fastervlm.models.grid_stream import timed
from fastervlm.models.qwen_frames import patchify, unpatchify
from fastervlm.scoring import received_attention
from fastervlm.timing import StageTimer


class FeatureCapture:
    """While open, keeps what the feature block's attention computes anyway: its fused qkv output, the (cos, sin)
    of the vision RoPE and the boundaries of its attention sequences (`cu_seqlens`)."""

    def __init__(self, attention: nn.Module) -> None:
        self.attention = attention
        self.qkv: torch.Tensor | None = None
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.bounds: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> FeatureCapture:
        self._handles = [self.attention.register_forward_pre_hook(self._inputs, with_kwargs=True),
                         self.attention.qkv.register_forward_hook(self._output)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.rope, self.bounds = kwargs["position_embeddings"], kwargs["cu_seqlens"]

    def _output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.qkv = output


@dataclass
class QwenStream(VisualStream):
    """One kind of visual input (videos, or images) of a loaded Qwen-VL model (`vlm`: its `.model`)."""

    modality: Modality
    pixel_key: str
    grid_key: str
    token_id: int
    vlm: nn.Module
    slot_per_frame: bool
    """Qwen3-VL videos: one prompt slot per temporal patch (timestamps between), t = 0 in each; else one per input."""
    seconds_per_position: float | None = None
    """Qwen2.5-VL videos: the config's tokens_per_second (t advances by it per second of video); None: t counts
    temporal patches."""

    @property
    def tower(self) -> nn.Module:
        return self.vlm.visual

    @property
    def _sizes(self) -> tuple[int, int, int]:
        config = self.tower.config
        return config.patch_size, config.temporal_patch_size, config.spatial_merge_size

    @property
    def provides(self) -> frozenset[str]:
        return frozenset({RECEIVED_SCORES, PATCH_KEYS, PROJECTED})

    @property
    def tokens_per_frame(self) -> int | None:
        return None  # the processor picks the grid per input

    @property
    def layers_run(self) -> int:
        return len(self.tower.blocks)

    def feature_attention(self) -> nn.Module:
        """The feature layer's attention (the last block's): its queries and keys give the scores."""
        return self.tower.blocks[-1].attn

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens  # the merger's outputs are in the LLM's space already

    def check(self) -> None:
        """Nothing to refuse: every Qwen-VL layout is reproduced."""

    # ----- encode ------------------------------------------------------------------------------------------------
    def encode(self, pixels: list[torch.Tensor], inputs: frozenset[str], timer: StageTimer | None = None, *,
               keep_cls: bool = False, times: list[FrameTimes | None] | None = None) -> list[VisualTokens]:
        patch, temporal, merge = self._sizes
        rows, grids = zip(*(patchify(item, patch, temporal, merge) for item in pixels))
        grid_thw = torch.tensor(grids, device=rows[0].device)
        scoring = bool(inputs & {RECEIVED_SCORES, PATCH_KEYS})
        capture = FeatureCapture(self.feature_attention()) if scoring else nullcontext()
        with timed(timer, "vision_encoder"), capture:
            out = self.tower(torch.cat(rows).to(self.tower.dtype), grid_thw=grid_thw)
        sizes = [t * (h // merge) * (w // merge) for t, h, w in grids]
        found: dict[str, list[torch.Tensor]] = {}
        if scoring:
            with timed(timer, "cls_scoring"), torch.no_grad():  # a ranking only: never part of a gradient
                found = self._scores(capture, grid_thw, inputs, sizes)
        features = out.pooler_output.split(sizes)
        deep = [layer.split(sizes) for layer in (getattr(out, "deepstack_features", None) or [])]
        times = times or [None] * len(pixels)
        items = []
        for i, (t, h, w) in enumerate(grids):
            shape = (t, (h // merge) * (w // merge))
            positions, span = self.positions((t, h, w), times[i])
            extra = {name: value[i] for name, value in found.items()}
            if PROJECTED in inputs:
                extra[PROJECTED] = features[i].view(*shape, -1)
            items.append(VisualTokens(features[i].view(*shape, -1), grid=(h // merge, w // merge),
                                      positions=positions.to(features[i].device), position_span=span,
                                      side_features=tuple(layer[i].view(*shape, -1) for layer in deep), **extra))
        return items

    def positions(self, grid: tuple[int, int, int], times: FrameTimes | None) -> tuple[torch.Tensor, int]:
        """(T, N, 3) stock (t, h, w) positions relative to each token's slot start, and the stock slot span."""
        t, h, w = grid
        merge = self._sizes[2]
        if self.seconds_per_position is not None:  # Qwen2.5-VL videos: t in seconds, one slot
            flat = self.vlm.get_vision_position_ids(0, torch.tensor([t, h, w]), 1, merge, self._time_interval(times))
            return flat.T.reshape(t, -1, 3).contiguous(), max(h, w) // merge
        if not self.slot_per_frame and t != 1:
            raise FasterVLMError(f"an {self.modality} of {t} temporal patches: an image is one temporal patch.")
        one = self.vlm.get_vision_position_ids(0, torch.tensor([1, h, w]), 1, merge)  # t = 0 in its slot
        return one.T[None].expand(t, -1, -1).contiguous(), max(h, w) // merge

    def _time_interval(self, times: FrameTimes | None) -> torch.Tensor:
        """Qwen2.5-VL's temporal step, tokens_per_second x seconds per temporal patch, in float32 as the stock
        processor's second_per_grid_ts meets the config's integer."""
        sampled_fps = (times or FrameTimes.assumed(1)).sampled_fps
        seconds = torch.tensor(self._sizes[1] / sampled_fps, dtype=torch.float32)
        return self.seconds_per_position * seconds

    def _scores(self, capture: FeatureCapture, grid_thw: torch.Tensor, inputs: frozenset[str],
                sizes: list[int]) -> dict[str, list[torch.Tensor]]:
        """Received scores and pooled keys of every merged token, per input (T, N) and (T, H, N, D)."""
        attention = self.feature_attention()
        heads = attention.num_heads
        qkv = capture.qkv.float()
        query, keys, _ = qkv.reshape(len(qkv), 3, heads, -1).permute(1, 0, 2, 3).unbind(0)  # (S, H, D) each
        unit = self._sizes[2] ** 2
        order = torch.argsort(self._window_index(grid_thw).to(qkv.device))  # tower order -> processor order
        found: dict[str, list[torch.Tensor]] = {}
        grids = [(t, (h // self._sizes[2]) * (w // self._sizes[2])) for t, h, w in grid_thw.tolist()]
        if RECEIVED_SCORES in inputs:
            rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb_vision
            cos, sin = capture.rope
            rotated_q, rotated_k = rotate(query, keys, cos, sin)
            scores = _received(rotated_q, rotated_k, capture.bounds.tolist(), attention.scaling)
            merged = scores.view(-1, unit).sum(dim=1)[order]
            found[RECEIVED_SCORES] = [s.view(shape) for s, shape in zip(merged.split(sizes), grids)]
        if PATCH_KEYS in inputs:
            pooled = keys.reshape(-1, unit, heads, keys.shape[-1]).mean(dim=1)[order]  # (tokens, H, D)
            found[PATCH_KEYS] = [k.view(t, n, heads, -1).transpose(1, 2)
                                 for k, (t, n) in zip(pooled.split(sizes), grids)]
        return found

    def _window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """The order the tower keeps merged tokens in (Qwen2.5-VL's windows; Qwen3-VL: the processor's)."""
        tower = self.tower
        if not hasattr(tower, "window_size"):
            return torch.arange(int((grid_thw.prod(-1) // self._sizes[2] ** 2).sum()))
        from transformers.vision_utils import get_vision_window_index

        index, _ = get_vision_window_index(grid_thw.cpu(), spatial_merge_size=tower.spatial_merge_size,
                                           window_size=tower.window_size, patch_size=tower.patch_size)
        return index

    # ----- fastervlm.apply on the stock model's inputs -----------------------------------------------------------
    def inputs(self, call: dict[str, Any]) -> list[torch.Tensor]:
        """The processor's flattened patches of a call (popped) -> (frames, 3, H, W) per item, as `encode` takes."""
        rows, grids = call.pop(self.pixel_key), call.get(self.grid_key)
        if grids is None:
            raise FasterVLMError(f"the call passes {self.pixel_key} without {self.grid_key}: pass the processor's "
                                 "outputs as they are.")
        patch, temporal, merge = self._sizes
        sizes = grids.prod(-1).tolist()
        return [unpatchify(part, tuple(grid), patch, temporal, merge)
                for part, grid in zip(rows.split(sizes), grids.tolist())]

    def placeholder_runs(self, kept: list[Any]) -> tuple[list[int], list[int]]:
        """Placeholders per temporal patch in the stock prompt, and tokens per temporal patch after pruning."""
        stock = [item.selection.patches for item in kept for _ in range(item.selection.frames)]
        return stock, [count for item in kept for count in item.tokens_per_frame]

    def package(self, kept: list[Any]) -> BaseModelOutputWithPooling:
        """Kept tokens per item -> the encoder output the stock forward reads (DeepStack features beside them)."""
        out = BaseModelOutputWithPooling(pooler_output=[item.item() for item in kept])
        if any(item.side_features for item in kept):
            layers = zip(*(item.side_features for item in kept))
            out["deepstack_features"] = [list(per_item) for per_item in layers]
        return out


def _received(query: torch.Tensor, keys: torch.Tensor, bounds: list[int], scale: float) -> torch.Tensor:
    """(S,) the attention each token receives within its attention sequence (`bounds`: cu_seqlens), mean over
    heads and the sequence's queries; runs of equal-length sequences are scored together."""
    out = torch.empty(len(query), dtype=torch.float32, device=query.device)
    start = 0
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    while start < len(lengths):
        run = start
        while run < len(lengths) and lengths[run] == lengths[start]:
            run += 1
        first, size, count = bounds[start], lengths[start], run - start
        block = slice(first, first + size * count)
        q = query[block].view(count, size, *query.shape[1:]).transpose(1, 2)  # (count, H, size, D)
        k = keys[block].view(count, size, *keys.shape[1:]).transpose(1, 2)
        out[block] = received_attention(q, k, scale).flatten()
        start = run
    return out
