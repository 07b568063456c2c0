"""Pruning methods, by name: `create_pruner("fastervlm", reduction=0.9)`, `list_methods()`."""

from fastervlm.methods.base import LLMPruner, Pruner, VisionPruner, VisualSelection
from fastervlm.methods.registry import create_pruner, list_methods, register

__all__ = ["LLMPruner", "Pruner", "VisionPruner", "VisualSelection", "create_pruner", "list_methods", "register"]
