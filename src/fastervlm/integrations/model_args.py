"""A harness's flat `key=value` model arguments and per-task decoding settings, read as fastervlm's.

lmms-eval hands a model one flat set of arguments (`--model_args pretrained=...,method=fastervlm,reduction=0.9,
video_tower=...`) and each task's `generation_kwargs`. Here they become `fastervlm.load` options, the method's
settings and `GenerationSettings`, with a clear error for what fits none of them. No harness is imported here.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.methods import default_method, get_method, has_setting, method_settings
from fastervlm.methods.base import BUDGET_PARAMETERS
from fastervlm.models.base import GenerationSettings, adapter_for

_LOADER_PARAMETERS = ("cls", "path", "device", "dtype")
"""Parameters of `load` that the plug-in fills itself (from `pretrained`, `device`, `dtype`)."""


def load_options(path: str | Path) -> list[str]:
    """The options `fastervlm.load` takes for this checkpoint: its own keyword options, then the family's (e.g.
    video_tower, num_frames)."""
    from fastervlm import pipeline

    general = [name for name, parameter in inspect.signature(pipeline.load).parameters.items()
               if parameter.kind is parameter.KEYWORD_ONLY and name not in _LOADER_PARAMETERS]
    adapter = adapter_for(Path(path).expanduser())
    return general + [name for name in inspect.signature(adapter.load).parameters if name not in _LOADER_PARAMETERS]


def split_options(path: str | Path, method: str | None, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """(method settings, load options) from the model arguments besides pretrained/method/device/dtype/batch size.

    A budget (keep / reduction) and every setting the method declares go to the method; the family's load options go
    to `fastervlm.load`; anything else is an error that lists both."""
    name = method or default_method(any(options.get(key) is not None for key in BUDGET_PARAMETERS))
    get_method(name)  # an unknown method: the registry's error, which lists the methods
    loading = load_options(path)
    settings = {key: value for key, value in options.items() if has_setting(name, key)}
    loader = {key: value for key, value in options.items() if key in loading and key not in settings}
    unknown = sorted(set(options) - set(settings) - set(loader))
    if unknown:
        known = [s.name for s in method_settings(name, budget=True)]
        raise FasterVLMError(
            f"model_args {', '.join(unknown)}: not a setting of method {name!r} ({', '.join(known) or 'none'}) nor a "
            f"load option of this checkpoint ({', '.join(loading) or 'none'}); check the spelling, or leave it out."
        )
    return settings, loader


def generation_settings(gen_kwargs: Mapping[str, Any]) -> tuple[GenerationSettings, tuple[str, ...]]:
    """A task's `generation_kwargs` as (GenerationSettings, stop strings).

    Greedy unless `do_sample` with a temperature other than 0 (the checkpoint's top_p / top_k then apply, as in
    `fastervlm answer --sample`); `until` cuts the text; beam search is refused (fastervlm decodes one beam)."""
    beams = _number(gen_kwargs, "num_beams", 1, whole=True)
    if beams > 1:
        raise FasterVLMError(f"the task asks for beam search (num_beams={beams}); fastervlm decodes greedily or by "
                             "sampling: set num_beams: 1 in the task's generation_kwargs (or pass --gen_kwargs "
                             "num_beams=1).")
    temperature = _number(gen_kwargs, "temperature", 0.0)
    sample = bool(gen_kwargs.get("do_sample")) and temperature != 0  # 0: greedy; nan or below 0 refused below
    if sample and any(gen_kwargs.get(key) not in (None, 1.0, 0) for key in ("top_p", "top_k")):
        warnings.warn("the task's top_p / top_k are not applied: fastervlm samples with the checkpoint's own "
                      "(generation_config.json).", stacklevel=2)
    tokens = _number(gen_kwargs, "max_new_tokens", GenerationSettings.max_new_tokens, whole=True)
    settings = GenerationSettings(max_new_tokens=tokens, sample=sample,
                                  temperature=temperature if sample else GenerationSettings.temperature)
    until = gen_kwargs.get("until") or ()
    return settings, (until,) if isinstance(until, str) else tuple(until)


def _number(gen_kwargs: Mapping[str, Any], key: str, default: Any, *, whole: bool = False) -> Any:
    """gen_kwargs[key] as a number (an int where `whole`; default when absent or empty); a value that is not one is
    named with the fix."""
    value = gen_kwargs.get(key)
    if value in (None, ""):
        return default
    try:
        number = float(value)  # TypeError for a list, ValueError for text
        if isinstance(value, bool) or (whole and not number.is_integer()):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise FasterVLMError(f"the task's generation_kwargs {key}={value!r} is not a {'whole ' if whole else ''}"
                             f"number: fix it in the task's YAML (or pass --gen_kwargs {key}=...).") from None
    return int(number) if whole else number


def batch_size(value: int | str | None, default: int) -> int:
    """lmms-eval's --batch_size: N, or auto / auto:N (then fastervlm's default for the device and dtype)."""
    if value is None or str(value).startswith("auto"):
        return default
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise FasterVLMError(f"--batch_size {value!r}: give a whole number of at least 1, or auto.")
    return size
