"""Pruning methods, by name: `create_pruner("fastervlm", reduction=0.9)`, `list_methods()`.

The registry is a leaf; importing this package registers the built-in methods (`builtin`).
"""

from fastervlm.methods.base import EncodedVideo, LLMPruner, Pruner, VisionPruner, VisualSelection
from fastervlm.methods.registry import (baseline_method, create_pruner, default_method, featured_methods, get_method,
                                       has_setting, is_baseline, list_methods, method_settings, register)
from fastervlm.methods import builtin  # noqa: E402,F401  (registers the built-in methods)

__all__ = [
    "EncodedVideo", "LLMPruner", "Pruner", "VisionPruner", "VisualSelection", "baseline_method", "create_pruner",
    "default_method", "featured_methods", "get_method", "has_setting", "is_baseline", "list_methods", "method_settings", "register",
]
