"""Which checkpoint is the project's tiny random one, and the name every output gives a model.

The tiny checkpoints sit in folders named like the real ones (the original-format one is `Video-LLaVA-7B/`, as a
download is), so a folder name cannot tell them apart. Each tiny checkpoint's config.json carries a marker
(`fastervlm_tiny`: its display name), written by the writers in fastervlm.tiny and read here. Every place that
shows or files a model's name (run folders, report rows, the web page's title, `show`'s legend, bench tables,
`answer`'s summary) asks `model_name`; nothing else derives it.

The tiny checkpoints also declare a short answer length in generation_config.json (`max_new_tokens`), so that
their noise takes seconds, not minutes; every other checkpoint answers up to 1024 tokens by default (the
original's), whatever its generation_config.json says.

Plain file reads, no torch: commands call these before any model loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MARKER = "fastervlm_tiny"
"""The config.json key that marks a tiny random checkpoint; its value is the checkpoint's display name."""
TINY_MAX_NEW_TOKENS = 16
"""The answer length a tiny checkpoint declares (generation_config.json): enough to see the answer is noise."""
ORIGINAL_MAX_NEW_TOKENS = 1024
"""The answer bound of every other checkpoint when none is given: the original's."""
RANDOM_NOTE = "random weights: its answers are noise"
"""What every output says next to a tiny model's name."""


def tiny_name(family: str) -> str:
    """The display name (and run-folder name) of the tiny random checkpoint of `family`."""
    return f"tiny-random-{family}"


def mark_tiny(folder: str | os.PathLike, family: str) -> None:
    """Mark a freshly written tiny checkpoint: its display name into config.json, its short answer length into
    generation_config.json (created when absent)."""
    folder = Path(folder)
    _update_json(folder / "config.json", {MARKER: tiny_name(family)})
    _update_json(folder / "generation_config.json", {"max_new_tokens": TINY_MAX_NEW_TOKENS})


def tiny_label(checkpoint: str | os.PathLike) -> str | None:
    """The tiny checkpoint's display name, or None for any other checkpoint (or a folder without config.json)."""
    label = _read_json(Path(checkpoint) / "config.json").get(MARKER)
    return label if isinstance(label, str) and label else None


def is_tiny(checkpoint: str | os.PathLike) -> bool:
    return tiny_label(checkpoint) is not None


def model_name(checkpoint: str | os.PathLike) -> str:
    """The name a model goes by in every output: the checkpoint folder's name, or for the project's tiny random
    checkpoints their marked name (`tiny-random-<family>`), whatever folder they sit in."""
    return tiny_label(checkpoint) or Path(checkpoint).name


def model_title(checkpoint: str | os.PathLike) -> str:
    """`model_name` for a reader: a tiny checkpoint's name says that its weights are random."""
    label = tiny_label(checkpoint)
    return f"{label} ({RANDOM_NOTE})" if label else Path(checkpoint).name


def default_max_new_tokens(checkpoint: str | os.PathLike) -> int:
    """The answer bound when none is given: a tiny checkpoint's own (generation_config.json), else 1024."""
    if not is_tiny(checkpoint):
        return ORIGINAL_MAX_NEW_TOKENS
    declared = _read_json(Path(checkpoint) / "generation_config.json").get("max_new_tokens")
    return declared if isinstance(declared, int) and declared > 0 else TINY_MAX_NEW_TOKENS


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no such file, or not JSON: not a tiny checkpoint (loading explains the rest)
        return {}
    return data if isinstance(data, dict) else {}


def _update_json(path: Path, fields: dict[str, Any]) -> None:
    path.write_text(json.dumps({**_read_json(path), **fields}, indent=2), encoding="utf-8")
