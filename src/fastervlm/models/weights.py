"""Read a subset of a checkpoint's tensors (one prefix) from any of the on-disk layouts transformers writes.

The original Video-LLaVA keeps its projector inside the LLM shards and its video tower in a CLIPModel file next
to a text model: in both cases only one prefix is wanted, and reading the rest would cost gigabytes.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers.modeling_utils import load_state_dict

from fastervlm.errors import CheckpointError

# transformers' file names, in the order it prefers them.
_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def check_weight_file(file: Path) -> None:
    """A clear error for a truncated or damaged weight file, from its header alone (safetensors: the header must
    cover the whole file; .bin: the zip's central directory, at its end, must be there); cheap even for GBs."""
    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt"):
                return
        if zipfile.is_zipfile(file) or _starts_as_zip(file):
            zipfile.ZipFile(file).close()
    except (SafetensorError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{file} is damaged or incomplete ({err}): re-download it.") from err


def _starts_as_zip(file: Path) -> bool:
    """A zip file cut short (its central directory gone) still starts with a zip signature."""
    with open(file, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory: sharded (via the index) or single, safetensors first; each
    checked for truncation (`check_weight_file`)."""
    files = _weight_files(directory)
    for file in files:
        check_weight_file(file)
    return files


def _weight_files(directory: Path) -> list[Path]:
    for index_name, single_name in _LAYOUTS:
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(_weight_map(index).values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index} lists shards that are not in {directory}: {', '.join(missing)}; finish the download."
                )
            return [directory / s for s in shards]
        if (directory / single_name).is_file():
            return [directory / single_name]
    raise CheckpointError(
        f"{directory} holds no weights (model.safetensors, pytorch_model.bin or a sharded index): "
        "point to the checkpoint folder that has them, or finish the download."
    )


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is damaged (no readable weight_map: {err}): re-download it.") from err
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} is damaged (its weight_map is not a mapping): re-download it.")
    return weight_map


def load_prefix(directory: Path, prefix: str, *, strip: bool = False) -> dict[str, torch.Tensor]:
    """All tensors whose name starts with `prefix`, read lazily from safetensors and memory-mapped from .bin."""
    found: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                found.update({k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)})
        else:
            # transformers' reader memory-maps zip-format files and also reads the legacy (pre-1.6) format
            state = load_state_dict(file, map_location="cpu", weights_only=True)
            found.update({k: v for k, v in state.items() if k.startswith(prefix)})
    if not found:
        raise CheckpointError(f"no weights named {prefix}* in {directory}: is this the right checkpoint folder?")
    return {k[len(prefix):]: v for k, v in found.items()} if strip else found


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load with an error that lists what the checkpoint lacks or has in excess."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source} has tensors of other shapes than its config.json describes: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit the {type(module).__name__} its config describes: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; "
            "check that config.json and the weights come from the same checkpoint."
        )
