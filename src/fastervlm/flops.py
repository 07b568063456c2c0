"""Analytic FLOPs of the LLM prefill: the one formula every method's cost is reported with (docs/flops.md).

Only matrix products are counted, at 2 FLOPs per multiply-accumulate; norms, RoPE, softmax, SiLU and the
residual additions are O(n x hidden) and left out. For one decoder layer that `n` tokens pass through:

    projections  2 n h (2 H d + 2 Hkv d)        q and o have H heads, k and v Hkv heads (GQA), head width d
    attention    2 (2 H d n^2)                  q k^T and the weighted sum of v, every query-key pair
    MLP          2 (3 n h I)                    SwiGLU: gate, up and down projections

and the prefill adds one LM-head row, 2 h V, because generation needs the logits of the last position only.
The attention term counts the full n x n square, as eager attention computes it and as FastV's paper does
(4nd^2 + 2n^2d + 2ndm per layer, with m = I and its third MLP matrix left out); kernels that skip the causal
upper triangle do about half of that term.

A method changes only the token counts: vision-stage methods shorten the prompt for every layer; FastV runs the
first K layers on the whole prompt and the rest on the kept tokens, plus one attention row it reads at layer K-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLMGeometry:
    """The LLM sizes the formula needs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> LLMGeometry:
        """From a Llama-style config: a transformers config object or a config.json dict; a VLM config's
        text_config is used when there is one."""
        text = _field(config, "text_config", None)
        if text is not None:
            config = text
        hidden = int(_field(config, "hidden_size"))
        heads = int(_field(config, "num_attention_heads"))
        kv_heads = _field(config, "num_key_value_heads", None)
        head_dim = _field(config, "head_dim", None)
        return cls(
            hidden=hidden,
            intermediate=int(_field(config, "intermediate_size")),
            layers=int(_field(config, "num_hidden_layers")),
            heads=heads,
            kv_heads=int(kv_heads) if kv_heads else heads,
            vocab=int(_field(config, "vocab_size")),
            head_dim=int(head_dim) if head_dim else hidden // heads,
        )


_REQUIRED = object()


def _field(config: Any, name: str, default: Any = _REQUIRED) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    if value is _REQUIRED:
        raise KeyError(f"the LLM config has no {name!r}; pass a Llama-style config (hidden_size, num_hidden_layers, ...)")
    return value


def layer_flops(geometry: LLMGeometry, tokens: int, keys: int | None = None) -> int:
    """One decoder layer over `tokens` new tokens attending to `keys` keys (default: themselves; more when a cache
    holds earlier tokens): projections + n x keys attention + SwiGLU MLP."""
    g, n = geometry, tokens
    projections = 2 * n * g.hidden * (2 * g.heads * g.head_dim + 2 * g.kv_heads * g.head_dim)
    attention = 2 * 2 * g.heads * g.head_dim * n * (n if keys is None else keys)
    mlp = 2 * 3 * n * g.hidden * g.intermediate
    return projections + attention + mlp


def attention_row_flops(geometry: LLMGeometry, tokens: int) -> int:
    """One query's attention row over `tokens` keys, all heads (FastV's score at layer K-1)."""
    return 2 * geometry.heads * geometry.head_dim * tokens


def prefill_flops(
    geometry: LLMGeometry, prompt_tokens: int, *, cached: int = 0, pruned_from: int | None = None,
    pruned_tokens: int | None = None,
) -> int:
    """LLM prefill FLOPs for a prompt of `prompt_tokens` tokens, visual tokens included.

    With `cached=c`, the first c tokens are already in the KV cache (a shared prefix): only the other ones are
    computed, each attending to all `prompt_tokens` keys. With `pruned_from=K, pruned_tokens=n'`, layers 0..K-1
    see the whole prompt and layers K.. see n' tokens (FastV). The LM head is counted for the last position only,
    as generation computes it.
    """
    if cached:
        new = prompt_tokens - cached
        return geometry.layers * layer_flops(geometry, new, keys=prompt_tokens) + 2 * geometry.hidden * geometry.vocab
    full_layers = geometry.layers
    total = 0
    if pruned_from is not None or pruned_tokens is not None:
        if pruned_from is None or pruned_tokens is None or not 0 <= pruned_from <= geometry.layers:
            raise ValueError("give both pruned_from (0..layers) and pruned_tokens, or neither")
        full_layers = pruned_from
        total += (geometry.layers - pruned_from) * layer_flops(geometry, pruned_tokens)
    total += full_layers * layer_flops(geometry, prompt_tokens)
    return total + 2 * geometry.hidden * geometry.vocab
