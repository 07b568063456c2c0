"""A checkpoint's language model as a text-only model folder that vLLM loads, without copying any weights.

Our checkpoints hold the LLM inside a bigger model: original Video-LLaVA (a LlavaLlamaForCausalLM config with
mm_* fields, shards holding `model.mm_projector.*` and `model.video_tower.*` beside `model.*` and `lm_head.*`),
and the transformers VLMs (the LLM is the config's text_config; its weights sit under `language_model.model.*`
or `model.language_model.*` beside the tower and the projector). vLLM loads a text model from a folder with a
text config.json and weight files. `text_model_folder` writes that folder once into the fastervlm cache:
config.json of the LLM, whose architecture names one of our vLLM model classes (`backends/vllm_models.py`),
and symbolic links to the checkpoint's own weight files (an export of a 7B model costs a few KB instead of
~13 GB). Those classes rename the keys while vLLM reads them (`vllm_names.text_weights`) and skip the tower and
projector.

No vLLM import here: the folder is written in fastervlm's process, the weights are read in vLLM's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastervlm.errors import UnsupportedModelError
from fastervlm.models.weights import weight_files
from fastervlm.paths import default_cache_dir

EXPORT_VERSION = 1
"""Bump when the folder's content changes, so that cached folders are rewritten."""
MODELS_MODULE = "fastervlm.backends.vllm_models"
TEXT_ARCHITECTURES = {"llama": "FasterVLMLlamaForCausalLM", "qwen2": "FasterVLMQwen2ForCausalLM"}
"""model_type of the LLM -> our vLLM class for it (a subclass of vLLM's own that reads our checkpoints' keys)."""
MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text")
"""LLMs that place visual tokens with 3-D (M-RoPE) positions: refused."""


def text_architecture(llm_config: Any) -> str:
    """Our vLLM class for this LLM, or a clear refusal."""
    model_type = getattr(llm_config, "model_type", None)
    if model_type in MROPE_MODEL_TYPES:
        raise UnsupportedModelError(
            f"the {model_type} language model places visual tokens with M-RoPE (3-D positions), which vLLM's "
            "prompt embeddings cannot carry: run this model with the transformers backend (the default)."
        )
    if model_type not in TEXT_ARCHITECTURES:
        raise UnsupportedModelError(
            f"the vLLM backend serves Llama and Qwen2 language models; this checkpoint's is {model_type!r}: run it "
            "with the transformers backend (the default)."
        )
    return TEXT_ARCHITECTURES[model_type]


def model_class_overrides() -> dict[str, str]:
    """vLLM's `model_class_overrides`: registers our classes in each of vLLM's processes by "module:class"."""
    return {name: f"{MODELS_MODULE}:{name}" for name in TEXT_ARCHITECTURES.values()}


def text_config(llm_config: Any) -> dict[str, Any]:
    """config.json of the text-only model: the LLM's own config, under our architecture."""
    config = llm_config.to_dict()
    config["architectures"] = [text_architecture(llm_config)]
    return config


def _key(checkpoint: Path, config: dict[str, Any], files: list[Path]) -> str:
    """Changes with the checkpoint's place, its weight files (name, size, time) and the LLM's config."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    fields = {"checkpoint": str(checkpoint), "files": stats, "config": config, "version": EXPORT_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def text_model_folder(checkpoint: Path, llm_config: Any, cache_dir: Path | None = None) -> Path:
    """The text-only folder for `checkpoint`'s LLM: written once (atomically) under `<cache>/vllm/`, reused after.

    Holds config.json and links to the checkpoint's weight files (and their index): no weight is copied."""
    checkpoint = checkpoint.resolve()
    config = text_config(llm_config)
    files = weight_files(checkpoint)
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "vllm"
    target = root / f"{checkpoint.name}-{_key(checkpoint, config, files)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".text-", dir=root))
    (staging / "config.json").write_text(json.dumps(config, indent=2, default=str))
    index = checkpoint / ("model.safetensors.index.json" if files[0].suffix == ".safetensors" else
                          "pytorch_model.bin.index.json")
    for file in [*files, *([index] if index.is_file() else [])]:
        os.symlink(file, staging / file.name)
    try:
        staging.rename(target)
    except OSError:  # another process wrote it first: keep that one
        shutil.rmtree(staging, ignore_errors=True)
    return target
