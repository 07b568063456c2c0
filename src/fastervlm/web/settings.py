"""What the page allows and starts from: upload limits, decoding defaults, the runs folder of the results tab."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastervlm.models.base import GenerationSettings

DEFAULT_MAX_UPLOAD_MB = 100.0
DEFAULT_MAX_VIDEO_SECONDS = 300.0
DEFAULT_MAX_QUESTION_CHARS = 1000
"""Video-QA questions are a sentence; a bound keeps one request from holding the model for every other visitor."""
DEFAULT_MAX_NEW_TOKENS = 256
"""Shorter than the library's 1024: a random tiny model never stops early, and a page should answer quickly."""


@dataclass(frozen=True)
class WebSettings:
    """Limits are checked before decoding; `generation` is the CLI's decoding flags (the page overrides its length)."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    max_question_chars: int = DEFAULT_MAX_QUESTION_CHARS
    generation: GenerationSettings = field(default_factory=lambda: _default_generation())
    flip: bool = False
    runs_dir: Path | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(min(self.max_upload_mb * 1024 * 1024, sys.maxsize))  # inf: no limit


def _default_generation() -> GenerationSettings:
    from fastervlm.models.base import GenerationSettings  # torch: not at import time (the CLI's parser reads this module)

    return GenerationSettings(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
