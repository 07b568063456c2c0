"""Read a subset of a checkpoint's tensors (one prefix) from any of the on-disk layouts transformers writes.

The original Video-LLaVA keeps its projector inside the LLM shards and its video tower in a CLIPModel file next
to a text model: in both cases only one prefix is wanted, and reading the rest would cost gigabytes.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
"""How a .bin file in torch's pre-1.6 format starts (its magic number, pickled); newer ones are zip archives."""


def check_weight_file(file: Path) -> None:
    """A clear error for a truncated or damaged weight file, from its header alone (safetensors: the header must
    cover the whole file; .bin: the zip's central directory, at its end, must be there, or the file must start as
    torch's legacy format does); cheap even for GBs."""
    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt"):
                return
        start = _start(file, len(LEGACY_TORCH_MAGIC))
        if zipfile.is_zipfile(file) or start.startswith(b"PK\x03\x04"):  # a cut zip still starts as one
            zipfile.ZipFile(file).close()
        elif start != LEGACY_TORCH_MAGIC:
            raise CheckpointError(f"{file} is damaged or incomplete (neither a zip archive nor torch's legacy format; "
                                  f"it starts with {start[:8].hex()}): re-download it.")
    except (SafetensorError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{file} is damaged or incomplete ({err}): re-download it.") from err


def _start(file: Path, size: int) -> bytes:
    with open(file, "rb") as handle:
        return handle.read(size)


@contextmanager
def unreadable_as_damaged(file: Path) -> Iterator[None]:
    """torch.load's errors for a .bin file whose contents are damaged (it opens as a zip, its pickle does not
    read) as one line naming the file."""
    try:
        yield
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{file} is damaged or incomplete ({type(err).__name__}: {first}): re-download it.") from err


def tensor_shapes(file: Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of the tensors in `file` whose name `keep` accepts, without reading their data: the
    safetensors header, or a zip-format .bin loaded onto the meta device (a legacy .bin cannot be, and gives none)."""
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if keep(name):
                    yield name, tuple(handle.get_slice(name).get_shape())
        return
    if not zipfile.is_zipfile(file):
        return
    with unreadable_as_damaged(file):
        state = torch.load(file, map_location="meta", mmap=True, weights_only=True)
    for name, tensor in state.items():
        if keep(name) and isinstance(tensor, torch.Tensor):
            yield name, tuple(tensor.shape)


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
            with unreadable_as_damaged(file):
                state = load_state_dict(file, map_location="cpu", weights_only=True)
            found.update({k: v for k, v in state.items() if k.startswith(prefix)})
    if not found:
        raise CheckpointError(f"no weights named {prefix}* in {directory}: is this the right checkpoint folder?")
    return {k[len(prefix):]: v for k, v in found.items()} if strip else found


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load with an error that lists what the checkpoint lacks or has in excess."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches, one line per tensor: the first says enough
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        first = lines[0] if lines else str(err).splitlines()[0]
        raise CheckpointError(f"{source} has tensors of other shapes than its config.json describes ({len(lines)} "
                              f"tensors; the first: {first}): use the config.json that came with these weights.") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit the {type(module).__name__} its config describes: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; "
            "check that config.json and the weights come from the same checkpoint."
        )
