"""Loading steps every family shares: quiet transformers calls, the tokenizer, the dtype, decoding defaults.

Not an adapter: adapters import it, it imports no adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers import logging as hf_logging

from fastervlm.errors import CheckpointError


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


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's tokenizer, with a clear error naming what is missing."""
    if not any((path / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"{path} has no tokenizer.model or tokenizer.json: copy the tokenizer files from the checkpoint.")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (ImportError, ValueError, OSError) as err:
        raise CheckpointError(
            f"could not read the tokenizer in {path} ({err}); copy the tokenizer files from the checkpoint (a "
            "tokenizer.model-only checkpoint also needs `pip install sentencepiece protobuf`)."
        ) from err


def generation_defaults(path: Path) -> GenerationConfig:
    """The checkpoint's generation_config.json (sampling's top_p/top_k come from it), else transformers' defaults."""
    return GenerationConfig.from_pretrained(path) if (path / "generation_config.json").is_file() else GenerationConfig()


def neutral_generation_config(text_config: Any) -> GenerationConfig:
    """Only the special ids: decoding settings come from GenerationSettings alone, so a checkpoint's max_length
    and the like never leak into decoding."""
    return GenerationConfig(bos_token_id=text_config.bos_token_id, eos_token_id=text_config.eos_token_id,
                            pad_token_id=text_config.pad_token_id)
