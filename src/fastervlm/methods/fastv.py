"""FastV (arXiv 2403.06764): inside the LLM, drop visual tokens from layer K on, ranked by layer K-1's attention.

At prefill the last prompt token's attention row in layer K-1, averaged over heads, ranks the visual tokens.
Layers >= K then run on every text token plus the R best visual tokens, at their original positions (with
gaps), so their KV cache holds only those; layers below K cache the whole prompt. R = frames x L, the seed
table's "# Token" column, so that every method is compared at the same token count.

How it plugs into a transformers 5.x Llama-style decoder (Llama, Mistral, Qwen2, the Qwen-VL text models:
`decoder.layers[i]` called with `attention_mask=`, `position_embeddings=(cos, sin)`, `position_ids=` keywords)
without copying its forward:
- a pre-hook on the decoder notes whether a call sees the whole sequence (the prefill, or any call without a
  cache) and which keys are padding;
- layer K-1's queries and keys come from its q_proj and k_proj outputs (capture.QKCapture), which the layer computes anyway,
  so the score is one attention row (scoring.attention_row) and the layer runs once, on SDPA/flash as before; a
  layer with per-head q/k norms (Qwen3) has them applied to the captured projections before RoPE, as it does;
- M-RoPE (Qwen-VL): cos/sin arrive already combined from the (t, h, w) positions, so gathering them at the kept
  positions keeps every kept token's own position;
- DeepStack (Qwen3-VL: `deepstack_visual_embeds` added to the visual positions' hidden states after each of the
  first layers, `visual_pos_masks` marking them): the decoder gets those of the layers below K, and the hooks add
  those of layers >= K to the kept visual tokens only;
- a pre-hook on every layer >= K hands it the pruned inputs: at prefill the hidden states (at layer K), RoPE
  cos/sin, position ids and mask rows/columns gathered at the kept positions; while decoding, the mask's key
  columns of the kept prompt tokens and of the generated ones (SDPA without padding has no mask to slice).
The DynamicCache then simply holds fewer entries in layers >= K; its length is read from layer 0, which is
never pruned. StaticCache, cache cropping (assisted decoding) and beam search are not supported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from fastervlm.capture import QKCapture, split_heads
from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.flops import LLMGeometry, attention_row_flops, prefill_flops
from fastervlm.methods.base import LLMPruner, check_whole_number, setting
from fastervlm.methods.registry import register
from fastervlm.scoring import attention_row
from fastervlm.selection import topk_per_frame


@dataclass
class FastVRun:
    """What FastV decided in the last full pass of the attached decoder: the value of `attach`'s context."""

    keep: torch.Tensor | None = None
    """(B, S') prompt positions that layers >= K keep, ascending (text, padding and the kept visual tokens)."""
    kept_visual: torch.Tensor | None = None
    """(B, R) ranks of the kept tokens among each sample's visual tokens (frame after frame), ascending."""
    scores: torch.Tensor | None = None
    """(B, V) head-mean attention of the last prompt token over the visual tokens, in layer K-1 (fp32)."""
    prompt_length: int = 0
    """Tokens in that pass; while decoding, the cache of layers >= K holds `keep` and the tokens after these."""


@register
@dataclass
class FastV(LLMPruner):
    name = "fastv"
    featured = True
    summary = "the last prompt token's attention in LLM layer K-1 ranks visual tokens; layers >= K keep frames*L of them"

    reference = "FastV, arXiv 2403.06764 (github.com/pkunlp-icler/FastV)"

    layer: int = setting(2, "K: the first LLM layer that sees only the kept visual tokens (FastV's paper: 2; its "
                            "lmms-eval file: 3)")

    def __post_init__(self) -> None:
        check_whole_number(self.layer, "fastv's {layer} K", "{layer}=2", minimum=1)

    def check_model(self, *, num_patches: int | None, llm_layers: int) -> None:
        super().check_model(num_patches=num_patches, llm_layers=llm_layers)
        check_layer(self.layer, llm_layers)

    @contextmanager
    def attach(
        self, decoder: torch.nn.Module, visual_mask: torch.Tensor, *, frames: int, num_patches: int
    ) -> Iterator[FastVRun]:
        hooks = _Hooks(decoder, visual_mask, self.layer, self._kept_count(visual_mask, frames, num_patches))
        try:
            yield hooks.run
        finally:
            hooks.remove()

    def _kept_count(self, visual_mask: torch.Tensor, frames: int, num_patches: int) -> int:
        """R: frames x L with a budget, every visual token without one."""
        counts = visual_mask.sum(dim=-1).unique()
        if visual_mask.ndim != 2 or len(counts) != 1:
            raise UnsupportedModelError("fastv needs the same number of visual tokens in every sample of a batch; "
                                        "answer the samples one at a time.")
        available = int(counts[0])
        kept = self.kept_visual_tokens(frames, num_patches) if self.prunes else available
        if kept > available:
            raise BudgetError(f"fastv cannot keep {kept} visual tokens: the prompt has {available}.")
        return kept

    def llm_prefill_flops(self, geometry: LLMGeometry, *, text_tokens: int, frames: int, num_patches: int,
                          visual_tokens: int | None = None) -> int:
        """Layers below K see every visual token of the prompt (`visual_tokens`, default frames x N), the rest the
        kept ones; plus the one attention row read at K-1."""
        full = text_tokens + (frames * num_patches if visual_tokens is None else visual_tokens)
        kept = text_tokens + self.kept_visual_tokens(frames, num_patches)
        return (prefill_flops(geometry, full, pruned_from=self.layer, pruned_tokens=kept)
                + attention_row_flops(geometry, full))


@dataclass
class _Pass:
    """One call of the decoder: what the hooks learn and build during it."""

    full: bool
    past: int
    length: int
    visual: torch.Tensor | None = None  # (B, n) at a full pass
    valid: torch.Tensor | None = None  # (B, n) keys that are not padding, or None when all are
    inputs: dict[str, Any] | None = None  # the pruned keyword inputs of layers >= K


def check_layer(layer: int, llm_layers: int) -> None:
    """K must leave at least one layer before it (where the ranking is read) and one from it on (that prunes)."""
    if not 1 <= layer < llm_layers:
        raise BudgetError(f"fastv's layer K={layer} must be between 1 and {llm_layers - 1} for this "
                          f"{llm_layers}-layer LLM ({{layer}}=K).")


class _Hooks:
    """The hooks of one `attach`, and the state they share."""

    def __init__(self, decoder: torch.nn.Module, visual_mask: torch.Tensor, layer: int, kept: int) -> None:
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise UnsupportedModelError(f"fastv needs a Llama-style decoder with .layers, got {type(decoder).__name__}.")
        check_layer(layer, len(layers))
        attn = layers[layer - 1].self_attn
        if not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "head_dim", "scaling", "num_key_value_groups")):
            raise UnsupportedModelError(f"fastv reads q_proj/k_proj of a Llama-style attention; {type(attn).__name__} differs.")
        if visual_mask[:, -1].any():
            raise UnsupportedModelError("fastv ranks visual tokens by the last prompt token: the prompt must end with text.")
        self.attn, self.kept = attn, kept
        self.visual = visual_mask.bool()
        self.prompt = visual_mask.shape[1]
        self.run = FastVRun()
        self.state: _Pass | None = None
        self.layer = layer
        self.depth = {id(block): i for i, block in enumerate(layers)}
        self.deep: list[torch.Tensor] = []  # DeepStack features of layers >= K, added by `_deepstack` hooks
        prompt = self.prompt  # layer K-1's last prompt query and the prompt's keys, at full passes only
        self.qk = QKCapture(attn, query=lambda q: q[:, prompt - 1 : prompt].clone(), keys=lambda k: k[:, :prompt],
                            active=lambda: self.state is not None and self.state.full).__enter__()
        self.handles = [
            decoder.register_forward_pre_hook(self._start, with_kwargs=True),
            decoder.register_forward_hook(self._finish),
            *(block.register_forward_pre_hook(self._prune, with_kwargs=True) for block in layers[layer:]),
            *(block.register_forward_hook(self._deepstack) for block in layers[layer:]),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.qk.__exit__()
        self.state = None

    # ----- hooks ----------------------------------------------------------------------------------------------
    def _start(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            inputs = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        batch, length = inputs.shape[:2]
        state = _Pass(full=past == 0, past=past, length=length)
        self.qk.clear()
        self.state = state
        self.deep = []
        if state.full:
            state.visual, state.valid = self._full_pass_masks(batch, length, kwargs.get("attention_mask"))
            deep = kwargs.get("deepstack_visual_embeds")
            if deep is not None and len(deep) > self.layer:  # layers >= K add theirs to the kept tokens only
                self.deep = list(deep[self.layer:])
                return args, {**kwargs, "deepstack_visual_embeds": list(deep[: self.layer])}
        return None

    def _finish(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.state = None

    def _prune(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        state = self.state
        if state is None or (not state.full and self.run.keep is None):
            return None
        if state.inputs is None:  # the first layer >= K: decide, and shorten the hidden states once
            if state.full:
                hidden = args[0] if args else kwargs["hidden_states"]
                state.inputs = self._prefill_inputs(kwargs)
                hidden = _rows(hidden, self.run.keep)
                args, kwargs = ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            else:
                state.inputs = self._decode_inputs(kwargs, state)
        return args, {**kwargs, **state.inputs}

    def _deepstack(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        """After layer K + i of a full pass: its DeepStack features added at the kept visual tokens."""
        index = self.depth[id(module)] - self.layer
        if self.state is None or not self.state.full or index >= len(self.deep):
            return None
        keep, kept_visual = self.run.keep, self.run.kept_visual
        per_row = int(self.state.visual[0].sum())
        rows = (kept_visual + per_row * torch.arange(len(kept_visual), device=keep.device)[:, None]).flatten()
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[self.state.visual.gather(1, keep)] += self.deep[index][rows].to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    # ----- the method ---------------------------------------------------------------------------------------
    def _full_pass_masks(self, batch: int, length: int, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        prompt = self.prompt
        if batch != self.visual.shape[0] or length < prompt:
            raise UnsupportedModelError(
                f"fastv was attached for {self.visual.shape[0]} prompt(s) of {prompt} tokens but the LLM got "
                f"{batch} x {length}; beam search and re-used attachments are not supported."
            )
        visual = torch.nn.functional.pad(self.visual, (0, length - prompt))  # generated tokens are text
        if attention_mask is None:
            return visual, None
        if not torch.is_tensor(attention_mask) or attention_mask.shape != (batch, length):
            raise UnsupportedModelError("fastv needs the usual 2-D attention_mask (batch, tokens) or none.")
        return visual, attention_mask.bool()

    def _prefill_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Score, choose, and the pruned inputs that every layer >= K gets in this pass."""
        state = self.state
        cos, sin = kwargs["position_embeddings"]
        scores = self._last_prompt_token_attention(cos, sin)
        batch = state.visual.shape[0]
        visual_positions = state.visual.nonzero()[:, 1].view(batch, -1)
        visual_scores = scores.gather(1, visual_positions)
        kept_visual = topk_per_frame(visual_scores, self.kept)  # ascending, ties -> lower index
        kept = ~state.visual
        kept.scatter_(1, visual_positions.gather(1, kept_visual), True)
        keep = kept.nonzero()[:, 1].view(batch, -1)
        self.run.keep, self.run.kept_visual, self.run.scores = keep, kept_visual, visual_scores
        self.run.prompt_length = state.length
        inputs: dict[str, Any] = {"position_embeddings": (_rows(cos, keep), _rows(sin, keep))}
        if kwargs.get("position_ids") is not None:
            inputs["position_ids"] = _rows(kwargs["position_ids"], keep)
        inputs["attention_mask"] = _slice_mask(kwargs.get("attention_mask"), keep, keep)
        return inputs

    def _decode_inputs(self, kwargs: dict[str, Any], state: _Pass) -> dict[str, Any]:
        """Key columns of the kept prompt tokens and of every token generated since."""
        mask = kwargs.get("attention_mask")
        total = state.past + state.length
        if mask is None:
            return {}
        if torch.is_tensor(mask) and mask.shape[-1] != total:
            raise UnsupportedModelError(f"fastv expects a mask over {total} cached keys, got {mask.shape[-1]}: "
                                        "use the default dynamic cache (no static cache).")
        keep = self.run.keep
        generated = torch.arange(self.run.prompt_length, total, device=keep.device).expand(keep.shape[0], -1)
        return {"attention_mask": _slice_mask(mask, None, torch.cat([keep, generated], dim=1))}

    def _last_prompt_token_attention(self, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(B, prompt) head-mean attention of the last prompt token in layer K-1 over the prompt (padding gets 0).

        A pass without cache also holds the tokens generated so far; they come after that query, so the score and
        the choice are the prefill's."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        state, attn = self.state, self.attn
        if self.qk.query is None or self.qk.keys is None:
            raise UnsupportedModelError("fastv could not read layer K-1's q_proj/k_proj outputs (fused projections?).")
        batch, length = self.qk.keys.shape[:2]
        query, keys = split_heads(self.qk.query, attn.head_dim), split_heads(self.qk.keys, attn.head_dim)
        if hasattr(attn, "q_norm"):  # per-head norms before RoPE (Qwen3), as the layer applies them
            query, keys = attn.q_norm(query), attn.k_norm(keys)
        prompt = self.prompt
        query, _ = apply_rotary_pos_emb(query, query, cos[:, prompt - 1 : prompt], sin[:, prompt - 1 : prompt])
        _, keys = apply_rotary_pos_emb(keys, keys, cos[:, :prompt], sin[:, :prompt])
        keys = repeat_kv(keys, attn.num_key_value_groups)
        self.qk.clear()
        scores = torch.zeros(batch, length, dtype=torch.float32, device=keys.device)
        for row in range(batch):
            valid = slice(None) if state.valid is None else state.valid[row, :prompt]
            weights = attention_row(query[row : row + 1, :, 0], keys[row : row + 1, :, valid], attn.scaling)
            scores[row, valid] = weights.mean(dim=1)[0]
        return scores


def _rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B or 1, n, ...) at positions index (B, m) along dim 1 -> (B, m, ...)."""
    batch = index.shape[0]
    tensor = tensor.expand(batch, *tensor.shape[1:])
    return tensor[torch.arange(batch, device=index.device)[:, None], index]


def _slice_mask(mask: Any, rows: torch.Tensor | None, cols: torch.Tensor) -> Any:
    """A 4-D (B, h, q, k) mask at the kept query rows and key columns; a 2-D (B, k) padding mask at its columns."""
    if mask is None:
        return None  # SDPA/flash without padding: causal over the shortened sequence, no mask while decoding
    if not torch.is_tensor(mask):
        raise UnsupportedModelError("fastv supports eager, sdpa and flash attention in the LLM, not block masks (flex).")
    if mask.ndim == 2:
        return _rows(mask.unsqueeze(-1), cols).squeeze(-1)
    mask = mask.expand(cols.shape[0], *mask.shape[1:])
    if rows is not None:
        mask = _rows(mask.transpose(1, 2), rows).transpose(1, 2)
    return _rows(mask.transpose(1, 3), cols).transpose(1, 3)
