"""Tiny checkpoints with 64-wide LLM heads (the vLLM CPU engine refuses the default's 16), one per family, written
once per session; and the prompts the engine's own stages build for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastervlm.tiny import TinySpec, with_head_dim_64, write_tiny_checkpoint
from fastervlm.tiny.hf import FAMILIES, TinyHFSpec, write_tiny_hf_checkpoint

ORIGINAL = "video_llava_original"
ALL_FAMILIES = (ORIGINAL, *FAMILIES)
"""Every family with a tiny checkpoint: original-format Video-LLaVA and the transformers families."""
_WRITTEN: dict[str, Path] = {}


def head_dim_64_checkpoint(family: str, factory: pytest.TempPathFactory) -> Path:
    """The family's tiny checkpoint with 64-wide LLM heads (written on first use, kept for the session)."""
    if family not in _WRITTEN:
        folder = factory.mktemp(f"{family}-hd64")
        if family == ORIGINAL:
            _WRITTEN[family] = write_tiny_checkpoint(folder, with_head_dim_64(TinySpec()))
        else:
            _WRITTEN[family] = write_tiny_hf_checkpoint(folder, family, with_head_dim_64(TinyHFSpec()))
    return _WRITTEN[family]


def stage_prompts(pipeline: Any, questions: list[str], methods: list[Any], seed: int = 0) -> Any:
    """A left-padded PromptBatch built by the engine's own stages: a random video encoded once, each method's
    selection projected, one question each (different methods and questions give different lengths)."""
    from fastervlm import engine

    adapter = pipeline.adapter
    video = np.random.default_rng(seed).integers(0, 256, (adapter.num_frames, 96, 128, 3), dtype=np.uint8)
    frames = pipeline.frames(pixels=adapter.preprocess(video))
    encoding = pipeline.encode(frames, methods)
    visuals = [pipeline.prepare(encoding, method).visual for method in methods]
    with torch.inference_mode():
        return engine.build_prompts(adapter, questions, visuals)


def unpadded(prompts: Any) -> list[torch.Tensor]:
    """Each prompt's embeddings without the left padding."""
    return [prompts.embeds[i, -length:] for i, length in enumerate(prompts.lengths)]
