"""fastervlm: training-free visual token pruning ([CLS] attention) for video VLMs.

Importing the package is cheap: torch, transformers and friends load on first use of what needs them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "apply", "remove", "processor_inputs", "Pipeline", "Answer", "GenerationSettings", "create_pruner", "list_methods", "FasterVLMError"]

_LAZY = {
    "load": "fastervlm.pipeline",
    "apply": "fastervlm.hf", "remove": "fastervlm.hf", "processor_inputs": "fastervlm.hf",
    "Pipeline": "fastervlm.pipeline",
    "Answer": "fastervlm.pipeline",
    "GenerationSettings": "fastervlm.models.base",
    "create_pruner": "fastervlm.methods",
    "list_methods": "fastervlm.methods",
    "FasterVLMError": "fastervlm.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastervlm' has no attribute {name!r}")
