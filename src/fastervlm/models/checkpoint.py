"""Checks of a checkpoint's files before anything is built from them, shared by every family.

Each JSON file must parse into an object; the sizes a config.json gives must be whole numbers; and they must agree
with the shapes of the weights (read from the safetensors headers, or from a .bin file's index without reading its
data), so that a damaged or mismatched file is one CheckpointError naming the file and the fix instead of a
traceback from deep inside transformers. Original-format Video-LLaVA (videollava.py, and languagebind.py for its
tower) and the transformers families (hf_base.py) call `read_config`, `read_json` and `check_parts`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastervlm.errors import CheckpointError

LLAMA_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
"""The sizes a Llama-style LLM is built from."""
VISION_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size")
"""The sizes a CLIP/SigLIP-style vision tower is built from."""


def positive_whole_number(value: Any) -> bool:
    """What a size in a config file must be: an int (JSON's true is not one) of at least 1."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def read_json(file: Path, *, fix: str = "re-download it") -> dict[str, Any]:
    """The JSON object in `file`; a CheckpointError naming the file when it is not readable, not JSON, or not an
    object (a list, a number)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}): {fix}.") from err
    except OSError as err:
        raise CheckpointError(f"{file} cannot be read ({err.strerror or err}): {fix}.") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds a JSON {_json_kind(data)}, not an object: {fix}.")
    return data


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def read_config(path: Path, *, flag: str = "--model") -> dict[str, Any]:
    """A checkpoint folder's config.json; `flag` is the option that named the folder (--model, --video-tower), so
    that the error for a wrong folder says which option to fix."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist: pass {flag} the folder that holds config.json.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: pass {flag} the checkpoint folder itself (it holds "
                              "config.json and the weights).")
    return read_json(config_file, fix="re-download the checkpoint")


@dataclass(frozen=True)
class Part:
    """One network a config.json describes: where its sizes sit (`section`: a sub-object such as "vision_config",
    or None for the top level), the sizes it is built from, and the tensors whose shapes those sizes decide (a
    tensor name, or the end of one after a '.', mapped to one size name per axis; None: that axis is not compared)."""

    section: str | None
    sizes: tuple[str, ...]
    shapes: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)


_CONFIG_FIX = "use the config.json that came with these weights, or re-download the checkpoint."
Defaults = Callable[[str | None], Any]
"""Where a size that config.json leaves out comes from (the section's config object); None: it must be there."""


def check_parts(folder: Path, config: dict[str, Any], parts: tuple[Part, ...], defaults: Defaults | None = None,
                *, weights: Path | None = None) -> None:
    """Every part's section is an object, its sizes are positive whole numbers (missing ones are taken from
    `defaults`, or refused without it), and they match the shapes of the weights in `weights` (default: `folder`)."""
    source = folder / "config.json"
    values = {part.section: _sizes(part, config, source, defaults) for part in parts}
    given = {(part.section, name) for part in parts for name in part.sizes
             if name in (config if part.section is None else config[part.section])}
    wanted = {name: (part, axes) for part in parts for name, axes in part.shapes.items()}
    for pattern, tensor, shape, file in _tensor_shapes(weights or folder, tuple(wanted)):
        part, axes = wanted[pattern]
        for axis, size in enumerate(axes):
            if size is None or axis >= len(shape) or shape[axis] == values[part.section][size]:
                continue
            says = (f"says {_dotted(part.section, size)} = {values[part.section][size]}" if (part.section, size) in given
                    else f"leaves out {_dotted(part.section, size)} (default {values[part.section][size]})")
            raise CheckpointError(f"{source} {says}, but {tensor} in {file.name} has shape {list(shape)}: {_CONFIG_FIX}")


def _sizes(part: Part, config: dict[str, Any], source: Path, defaults: Defaults | None) -> dict[str, int]:
    """The part's sizes, each a positive int; a missing section or size (without defaults) is refused."""
    section = config if part.section is None else config.get(part.section)
    if not isinstance(section, dict):
        raise CheckpointError(f"{source} has no {part.section} object (found {_json_kind(section)}): {_CONFIG_FIX}")
    found: dict[str, int] = {}
    for name in part.sizes:  # every size given is checked before any default is built from the file
        if name not in section:
            continue
        value = section[name]
        if not positive_whole_number(value):
            raise CheckpointError(f"{source} has {_dotted(part.section, name)} = {json.dumps(value)}, not a positive "
                                  f"whole number: {_CONFIG_FIX}")
        found[name] = value
    for name in part.sizes:
        if name not in found and defaults is None:
            raise CheckpointError(f"{source} lacks {_dotted(part.section, name)}: {_CONFIG_FIX}")
        if name not in found:
            found[name] = int(getattr(defaults(part.section), name))
    return found


def unbuildable_config(path: Path, err: Exception) -> CheckpointError:
    """The error for a config.json that transformers refuses to build a config from (a field of the wrong type)."""
    first = " ".join(str(err).split())[:300]
    return CheckpointError(f"{path / 'config.json'} does not describe a model transformers can build "
                           f"({type(err).__name__}: {first}): {_CONFIG_FIX}")


def _dotted(section: str | None, name: str) -> str:
    return name if section is None else f"{section}.{name}"


def _matching(name: str, patterns: tuple[str, ...]) -> str | None:
    """The pattern `name` matches: the whole name, or its end after a '.'."""
    return next((p for p in patterns if name == p or name.endswith(f".{p}")), None)


def _tensor_shapes(folder: Path, patterns: tuple[str, ...]) -> Iterator[tuple[str, str, tuple[int, ...], Path]]:
    """(pattern, name, shape, file) of every tensor that matches one of `patterns`, from the files' headers only."""
    from fastervlm.models.weights import tensor_shapes, weight_files  # transformers: only when loading

    if not patterns:
        return
    for file in weight_files(folder):
        for name, shape in tensor_shapes(file, lambda n: _matching(n, patterns) is not None):
            yield str(_matching(name, patterns)), name, shape, file


VLM_PARTS = (
    Part("text_config", LLAMA_SIZES, {"embed_tokens.weight": ("vocab_size", "hidden_size")}),
    Part("vision_config", VISION_SIZES, {"patch_embedding.weight": ("hidden_size", None, "patch_size", "patch_size")}),
)
"""A transformers VLM checkpoint: its LLM and its vision tower, each with the tensors that show their widths."""


def vlm_parts(config: dict[str, Any]) -> tuple[Part, ...]:
    """The LLaVA-style families' parts, whatever their config.json holds."""
    return VLM_PARTS

QWEN_VISION_SIZES = ("hidden_size", "intermediate_size", "depth", "num_heads", "patch_size", "temporal_patch_size")
"""The sizes a Qwen-VL vision tower is built from (its patch embedding is a 3-D convolution over time and space)."""


def qwen_vl_parts(config: dict[str, Any]) -> tuple[Part, ...]:
    """A Qwen-VL checkpoint: the LLM's sizes sit in text_config, or at the top level (Qwen2.5-VL's hub configs)."""
    text = "text_config" if "text_config" in config else None
    return (Part(text, LLAMA_SIZES, {"embed_tokens.weight": ("vocab_size", "hidden_size")}),
            Part("vision_config", QWEN_VISION_SIZES,
                 {"patch_embed.proj.weight": ("hidden_size", None, "temporal_patch_size", "patch_size", "patch_size")}))


def check_transformers_checkpoint(path: Path, parts: Callable[[dict[str, Any]], tuple[Part, ...]] = vlm_parts) -> None:
    """`check_parts` for a transformers VLM folder (`parts`: those its config.json describes): a size its
    config.json leaves out is transformers' default (hub configs omit them), so it is read from the config
    transformers builds, as from_pretrained will build it."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError

    config = read_config(path)
    built: list[Any] = []

    def transformers_config() -> Any:
        if not built:
            try:
                built.append(transformers.AutoConfig.from_pretrained(path))
            except (ValueError, TypeError, KeyError, OSError, StrictDataclassError) as err:
                raise unbuildable_config(path, err) from err
        return built[0]

    def defaults(section: str | None) -> Any:
        return transformers_config().get_text_config() if section is None else getattr(transformers_config(), section)

    check_parts(path, config, parts(config), defaults)
    transformers_config()  # also refuses a field of the wrong type that no size check covers (rms_norm_eps: "x")
