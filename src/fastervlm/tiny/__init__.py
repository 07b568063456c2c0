"""Tiny random checkpoints in the real on-disk formats: what the tests, the demo and the benchmark run on with no
download. Each family's tiny spec lives next to its adapter (`models/videollava_tiny.py` for the original format,
`tiny_config` on each transformers family); this package writes them into the cache and hands them out.

    ensure_tiny_checkpoint()                  # the demo's original-format Video-LLaVA, written once, cached
    write_tiny_hf_checkpoint(folder, family)  # a transformers-format family (fastervlm.tiny.hf)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fastervlm.models.videollava_tiny import (LLM_DIR, TOWER_DIR, TinySpec, TinyWeights, build_adapter, llm_config,
                                              tiny_weights, train_tokenizer, vision_config, write_tiny_checkpoint)
from fastervlm.paths import default_cache_dir

__all__ = ["LLM_DIR", "TOWER_DIR", "TinySpec", "TinyWeights", "build_adapter", "default_cache_dir",
           "ensure_tiny_checkpoint", "llm_config", "tiny_weights", "train_tokenizer", "vision_config",
           "write_tiny_checkpoint"]


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
