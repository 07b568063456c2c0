"""Where fastervlm keeps what it writes for reuse: tiny checkpoints, judge verdicts, decoded frames."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$FASTERVLM_CACHE, else ~/.cache/fastervlm."""
    return Path(os.environ.get("FASTERVLM_CACHE", Path.home() / ".cache" / "fastervlm"))
