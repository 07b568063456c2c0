"""The one exception type users see: a message that names the problem and the fix.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PARAMETER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class FasterVLMError(Exception):
    """A bad input or set-up that the user can fix; the message says how."""


class MediaError(FasterVLMError):
    """A video or image file that cannot be used (missing, not a video, undecodable)."""


class CheckpointError(FasterVLMError):
    """A checkpoint directory that is missing files or disagrees with itself."""


class BudgetError(FasterVLMError):
    """An invalid budget (keep / reduction) or method setting.

    The message names the library's parameters as `{keep}`, `{reduction}`, `{layer}` ...: `str()` shows them as
    the Python call spells them (keep, reduction), and the CLI shows its own flags instead (`render`).
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render({}))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each `{parameter}` replaced by `names[parameter]` (the parameter itself when absent)."""

        def name(match: re.Match[str]) -> str:
            try:
                return names[match[1]]
            except KeyError:
                return match[1]

        return _PARAMETER.sub(name, self.template)


class UnsupportedModelError(FasterVLMError):
    """A method that cannot work on this model (e.g. [CLS] pruning on an encoder without [CLS])."""


class PromptTooLongError(FasterVLMError):
    """A prompt (visual + text tokens) longer than the LLM's context: it would be answered, silently wrong."""

    def __init__(self, message: str, sample: int) -> None:
        super().__init__(message)
        self.sample = sample
        """The position of the too-long prompt in its batch."""
