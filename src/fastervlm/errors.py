"""The one exception type users see: a message that names the problem and the fix.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class FasterVLMError(Exception):
    """A bad input or set-up that the user can fix; the message says how."""


class MediaError(FasterVLMError):
    """A video or image file that cannot be used (missing, not a video, undecodable)."""


class CheckpointError(FasterVLMError):
    """A checkpoint directory that is missing files or disagrees with itself."""


class BudgetError(FasterVLMError):
    """An invalid --keep / --reduction or method setting."""


class UnsupportedModelError(FasterVLMError):
    """A method that cannot work on this model (e.g. [CLS] pruning on an encoder without [CLS])."""
