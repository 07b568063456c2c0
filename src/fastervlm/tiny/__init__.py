"""Tiny random checkpoints in the real on-disk formats: what the tests, the demo and the benchmark run on with no
download. Each family's tiny spec lives next to its adapter (`models/videollava_tiny.py` for the original format,
`tiny_config` on each transformers family); this package writes them into the cache and hands them out.

    ensure_tiny_checkpoint()                  # the demo's original-format Video-LLaVA, written once, cached
    write_tiny_hf_checkpoint(folder, family)  # a transformers-format family (fastervlm.tiny.hf)
    with_head_dim_64(TinySpec())              # the same with 64-wide LLM heads (vLLM's CPU engine needs them)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from fastervlm.models.videollava_tiny import (LLM_DIR, TOWER_DIR, TinySpec, TinyWeights, build_adapter, llm_config,
                                              tiny_weights, train_tokenizer, vision_config, write_tiny_checkpoint)
from fastervlm.models.base import TinySizes
from fastervlm.paths import default_cache_dir

__all__ = ["LLM_DIR", "TOWER_DIR", "TinySpec", "TinyWeights", "build_adapter", "default_cache_dir",
           "ensure_tiny_checkpoint", "llm_config", "tiny_weights", "train_tokenizer", "vision_config",
           "with_head_dim_64", "write_tiny_checkpoint"]

Spec = TypeVar("Spec", bound=TinySizes)


def with_head_dim_64(spec: Spec) -> Spec:
    """`spec` with an LLM of 64-wide attention heads (width 128, 2 heads; 1 key/value head where the spec has
    grouped-query attention): vLLM's CPU engine refuses the default's 16-wide heads. Everything else is kept."""
    kv = {"llm_kv_heads": 1} if hasattr(spec, "llm_kv_heads") else {}
    return dataclasses.replace(spec, llm_width=128, llm_intermediate=256, llm_heads=2, **kv)


def ensure_tiny_checkpoint(spec: TinySpec = TinySpec(), cache_dir: str | os.PathLike | None = None) -> Path:
    """The tiny checkpoint for `spec`, written on first use into the cache (atomically: no half-written folder)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-{spec.key()}"
    if not (target / LLM_DIR / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        write_tiny_checkpoint(staging, spec)
        try:
            staging.rename(target)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(staging, ignore_errors=True)
    return target / LLM_DIR
