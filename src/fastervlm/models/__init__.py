"""Model adapters, one file per family, registered by config content.

The registry (`base`) is a leaf; importing this package registers the built-in families (`builtin`).
"""

from fastervlm.models.base import GenerationSettings, ModelAdapter, VisualSlot, VisualStream, adapter_for, register_adapter
from fastervlm.models import builtin  # noqa: E402,F401  (registers the built-in families)

__all__ = ["GenerationSettings", "ModelAdapter", "VisualSlot", "VisualStream", "adapter_for", "register_adapter"]
