"""Pruning methods, by name: `create_pruner("fastervlm", reduction=0.9)`, `list_methods()`.

The registry is a leaf; importing this package registers the built-in methods (`builtin`).
"""

from fastervlm.methods.base import VisualTokens, LLMPruner, Pruner, VisionPruner, Selection
from fastervlm.methods.registry import (baseline_method, create_pruner, default_method, featured_methods, get_method,
                                       has_setting, is_baseline, list_methods, method_settings, no_cls_error, register)
from fastervlm.methods import builtin  # noqa: E402,F401  (registers the built-in methods)

__all__ = [
    "VisualTokens", "LLMPruner", "Pruner", "VisionPruner", "Selection", "baseline_method", "create_pruner",
    "default_method", "featured_methods", "get_method", "has_setting", "is_baseline", "list_methods", "method_settings", "register",
]
