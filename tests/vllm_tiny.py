"""Tiny checkpoints with 64-wide LLM heads (the vLLM CPU engine refuses the default's 16), one per family, written
once per session; the prompts come from the engine's own stages (`fastervlm.backends.vllm_bench`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastervlm.backends.vllm_bench import FAMILIES as LLM_FAMILIES
from fastervlm.backends.vllm_bench import (QUESTIONS, stage_prompts, transformers_ids, unpadded,  # noqa: F401
                                           write_checkpoint)
from fastervlm.tiny.hf import FAMILIES

ORIGINAL = LLM_FAMILIES["llama"]
SERVED_FAMILIES = (ORIGINAL, *(family for family in FAMILIES if not family.startswith("qwen")))
"""Every family whose language model the vLLM backend serves (original-format Video-LLaVA and the LLaVA-style
transformers families); the Qwen-VL families place visual tokens with M-RoPE and are refused."""
_WRITTEN: dict[str, Path] = {}


def head_dim_64_checkpoint(family: str, factory: pytest.TempPathFactory) -> Path:
    """The family's tiny checkpoint with 64-wide LLM heads (written on first use, kept for the session)."""
    if family not in _WRITTEN:
        _WRITTEN[family] = write_checkpoint(family, factory.mktemp(f"{family}-hd64"))
    return _WRITTEN[family]
