"""One call to prune a Hugging Face transformers VLM that you already loaded.

    model = VideoLlavaForConditionalGeneration.from_pretrained("LanguageBind/Video-LLaVA-7B-hf", ...)
    pruning = fastervlm.apply(model, method="fastervlm", reduction=0.9)
    out = model.generate(**inputs)        # the processor's inputs as they are; out starts with inputs.input_ids
    pruning.remove()                      # or fastervlm.remove(model); or `with fastervlm.apply(...):`

Supported: VideoLlavaForConditionalGeneration, LlavaForConditionalGeneration (LLaVA-1.5) and
LlavaNextVideoForConditionalGeneration; see docs/transformers.md. The same families load from a folder with
`fastervlm.load(path)`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fastervlm.errors import FasterVLMError, UnsupportedModelError
from fastervlm.methods import Pruner, create_pruner
from fastervlm.models.hf_adapter import hf_adapter_for, hf_families
from fastervlm.models.hf_common import HFPruning, encoder_without_cls, no_cls_error


def apply(model: nn.Module, method: str | Pruner = "fastervlm", *, keep_cls: bool = False, **settings: Any) -> HFPruning:
    """Install a pruning method on `model` (replacing one applied before) and return the handle that undoes it.

    method: a method name with its `settings` (keep=, reduction=, ...), or a Pruner instance.
    keep_cls: also feed each frame's [CLS] token where the stock model does (Video-LLaVA-hf videos).
    """
    if isinstance(method, Pruner) and settings:
        raise FasterVLMError("pass method settings either to create_pruner or to apply(), not both.")
    pruner = method if isinstance(method, Pruner) else create_pruner(method, **settings)
    config = model.config.to_dict()
    name = type(model).__name__
    family = hf_adapter_for(config)
    unsupported = (f"fastervlm.apply supports {', '.join(cls.model_class for cls in hf_families())}; {name} (model_type "
                   f"{config.get('model_type')!r}) is not one of them yet.")
    encoder = encoder_without_cls(config)
    if encoder is not None and pruner.needs_cls_scores:
        error = no_cls_error(name, encoder, pruner.name)
        raise error if family is not None else UnsupportedModelError(f"{error} {unsupported}")
    if family is None:
        raise UnsupportedModelError(unsupported)
    if not (hasattr(model, "generate") and hasattr(model, "model")):
        raise UnsupportedModelError(f"pass the whole {family.model_class}, not its {name} part.")
    return family.pruning(model, pruner, keep_cls=keep_cls).install()


def remove(model: nn.Module) -> bool:
    """Undo `apply` on `model`; False when nothing was applied."""
    pruning = getattr(model, HFPruning.ATTRIBUTE, None)
    if pruning is None:
        return False
    pruning.remove()
    return True
