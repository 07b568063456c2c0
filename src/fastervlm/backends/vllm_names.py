"""The names of an LLM's tensors inside a whole fastervlm checkpoint, mapped to a text-only model's names.

A leaf (standard library only): vLLM's processes import it through `backends/vllm_models.py`, in an environment
that may hold nothing of fastervlm's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

LLM_PREFIXES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("language_model.", "model."),
)
"""Where each layout keeps the LLM, renamed to a text model's names; the first matching prefix wins."""
TEXT_MODULES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
"""What a text model holds: every other tensor (tower, projector, image_newline) is skipped."""
T = TypeVar("T")


def text_name(name: str) -> str | None:
    """A checkpoint tensor name -> its name in a text-only model, None for a tensor outside the LLM."""
    for prefix, replacement in LLM_PREFIXES:
        if name.startswith(prefix):
            name = replacement + name[len(prefix):]
            break
    return name if name.startswith(TEXT_MODULES) else None


def text_weights(weights: Iterable[tuple[str, T]]) -> Iterator[tuple[str, T]]:
    """The LLM's tensors of a checkpoint, under a text model's names (what vLLM's loader is fed)."""
    for name, tensor in weights:
        renamed = text_name(name)
        if renamed is not None:
            yield renamed, tensor
