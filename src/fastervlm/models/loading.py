"""Loading steps every family shares: quiet transformers calls, the tokenizer, the dtype, decoding defaults.

Not an adapter: adapters import it, it imports no adapter.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers import logging as hf_logging

from fastervlm.errors import CheckpointError
from fastervlm.models.checkpoint import read_json


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading chatter off for the block (skipped keys we expect, progress bars), then as it was."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def default_dtype(declared: str | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU whatever the checkpoint says (bf16 matmuls are slow there); the checkpoint's dtype on CUDA."""
    if device.type == "cpu":
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}.get(declared or "float16", torch.float16)


TOKENIZER_SLACK = 256
"""How many more embedding rows than tokenizer entries a checkpoint may have: checkpoints pad the embedding to a
multiple of 64 or 128 (Video-LLaVA-7B-hf: 32064 rows, 32002 tokens), large vocabularies by up to 1/256 of it
(Qwen2.5-VL-7B: 152064 rows, 151665 tokens). A damaged tokenizer.model reads as far fewer pieces (a cut file: 118
instead of 32000)."""


def placement(device: torch.device) -> dict[str, Any]:
    """from_pretrained's arguments that put the weights straight onto `device`: on CUDA a device_map (it needs
    accelerate, `pip install "fastervlm[gpu]"`), so the model never sits whole in host RAM; else nothing (the
    model loads on the CPU, where it stays or from where it is moved)."""
    if device.type != "cuda":
        return {}
    if importlib.util.find_spec("accelerate") is None:
        warnings.warn('loading the model on the CPU first, then moving it to the GPU (a full copy in host RAM): '
                      'pip install "fastervlm[gpu]" (accelerate) to load it straight onto the GPU.', stacklevel=3)
        return {}
    return {"device_map": {"": device}}


TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json")
"""The tokenizer's JSON files: each is checked on its own first, so that a damaged one is named, not another."""


def load_tokenizer(path: Path, *, vocab_size: int | None = None, config: Any = None) -> Any:
    """The checkpoint's tokenizer, checked against the checkpoint: an entry count that fits the LLM's vocabulary
    and BOS/EOS tokens (a cut or foreign tokenizer.model loads, then tokenises everything wrong).

    config: the model's config as loaded (transformers' tokenizer loader reads config.json otherwise, and reads an
    original Video-LLaVA one as a LLaVA-1.5 config, warning about its legacy rope_scaling field)."""
    if not any((path / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"{path} has no tokenizer.model or tokenizer.json: copy the tokenizer files from the checkpoint.")
    for name in TOKENIZER_JSON_FILES:
        if (path / name).is_file():
            read_json(path / name)
    try:
        with quiet_transformers():  # its fallbacks print misleading advice (install tiktoken) for a damaged file
            tokenizer = AutoTokenizer.from_pretrained(path, config=config)
    except Exception as err:  # noqa: BLE001  (the tokenizers library raises plain Exception for a damaged file)
        raise CheckpointError(_unreadable_tokenizer(path, err)) from err
    damaged = f"{_tokenizer_file(path)} is damaged or does not belong to this checkpoint: re-download it"
    declares_bos = tokenizer.bos_token is not None  # Qwen's tokenizers declare none
    if (declares_bos and tokenizer.bos_token_id is None) or tokenizer.eos_token_id is None:
        raise CheckpointError(f"{damaged} (it has no BOS/EOS tokens).")
    slack = max(TOKENIZER_SLACK, (vocab_size or 0) // 256)
    if vocab_size is not None and not vocab_size - slack <= len(tokenizer) <= vocab_size:
        raise CheckpointError(f"{damaged} (it has {len(tokenizer)} entries; the model's vocabulary has {vocab_size}).")
    return tokenizer


def _tokenizer_file(path: Path) -> Path:
    return path / ("tokenizer.json" if (path / "tokenizer.json").is_file() else "tokenizer.model")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _unreadable_tokenizer(path: Path, err: Exception) -> str:
    """Why the tokenizer did not load: missing packages only when they are missing, else the file itself."""
    missing = [name for name in ("sentencepiece", "google.protobuf") if not _importable(name)]
    if missing and (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
        return (f"could not read the tokenizer in {path} ({err}); a tokenizer.model-only checkpoint needs "
                "`pip install sentencepiece protobuf`.")
    kind = type(err).__name__  # not its text: transformers' fallbacks name packages that are not the problem
    return f"{_tokenizer_file(path)} is damaged or does not belong to this checkpoint ({kind} while reading it): re-download it."


def generation_defaults(path: Path) -> GenerationConfig:
    """The checkpoint's generation_config.json (sampling's top_p/top_k come from it), else transformers' defaults."""
    file = path / "generation_config.json"
    if not file.is_file():
        return GenerationConfig()
    read_json(file)
    try:
        return GenerationConfig.from_pretrained(path)
    except (ValueError, TypeError, OSError) as err:  # values transformers refuses (a top_p of "high")
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{file} is not a generation config transformers can read ({reason}): re-download it.") from err


def neutral_generation_config(text_config: Any) -> GenerationConfig:
    """Only the special ids: decoding settings come from GenerationSettings alone, so a checkpoint's max_length
    and the like never leak into decoding."""
    ids = {name: getattr(text_config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return GenerationConfig(**ids)
