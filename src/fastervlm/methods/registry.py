"""The method registry: create_pruner("fastervlm", reduction=0.9), list_methods(), and what callers ask of it.

A leaf (timm's `_registry.py` habit): it imports no method. `fastervlm.methods` imports the built-in methods,
each of which registers itself with `@register`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.methods.base import BUDGET_PARAMETERS, CLS_SCORES, Pruner

_METHODS: dict[str, type[Pruner]] = {}


def register(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: make a method available by its `name`."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> dict[str, type[Pruner]]:
    """Every registered method by name, in registration order."""
    return dict(_METHODS)


def get_method(name: str) -> type[Pruner]:
    """A registered method class by name, with an error that lists the others."""
    if name not in _METHODS:
        raise BudgetError(f"unknown method {name!r}; choose one of: {', '.join(_METHODS)} (see `fastervlm methods`).")
    return _METHODS[name]


def create_pruner(name: str, **settings: Any) -> Pruner:
    """Build a method by name; settings left out take the method's defaults, unknown ones are an error."""
    cls = get_method(name)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise BudgetError(f"method {name!r} has no setting {', '.join(unknown)}; its settings are: {', '.join(sorted(known))}.")
    return cls(**settings)


def _the_one(flag: str) -> str:
    found = [name for name, cls in _METHODS.items() if getattr(cls, flag)]
    if len(found) != 1:
        raise RuntimeError(f"exactly one registered method must declare {flag} = True, found {found}")
    return found[0]


def baseline_method() -> str:
    """The method that keeps every token: the unpruned row of every table."""
    return _the_one("baseline")


def default_method(budget_given: bool) -> str:
    """The method a request without --method means: the default one with a budget, the baseline without."""
    return _the_one("default") if budget_given else baseline_method()


def featured_methods() -> list[str]:
    """The methods a comparison runs by default (`bench`), in registration order."""
    return [name for name, cls in _METHODS.items() if cls.featured]


def is_baseline(settings: dict[str, Any]) -> bool:
    """Whether a configuration's settings (`Pruner.settings()`, as stored in a run) keep every token: the
    baseline method, a method without a budget, or one at reduction 0."""
    cls = _METHODS.get(settings.get("method", ""))
    if cls is None:
        return False
    keep, reduction = (settings.get(key) for key in BUDGET_PARAMETERS)
    return cls.baseline or (keep is None and reduction in (None, 0))


@dataclass(frozen=True)
class SettingInfo:
    """One setting of a method, as `fastervlm methods`, the CLI and the web page show it."""

    name: str
    default: Any
    type: str
    help: str


def method_settings(method: str | type[Pruner], *, budget: bool = False) -> list[SettingInfo]:
    """A method's settings with defaults and help (the budget's two parameters only when `budget`)."""
    cls = get_method(method) if isinstance(method, str) else method
    return [
        SettingInfo(f.name, None if f.default is MISSING else f.default, str(f.type), f.metadata.get("help", ""))
        for f in fields(cls)
        if f.init and (budget or f.name not in BUDGET_PARAMETERS)
    ]


def has_setting(method: str | None, name: str) -> bool:
    """Whether a registered method takes the setting `name` (False for an unknown method)."""
    cls = _METHODS.get(method or "")
    return cls is not None and any(f.name == name for f in fields(cls))


def no_cls_error(model: str, encoder: str, method: str) -> UnsupportedModelError:
    """The error for a [CLS]-based method on an encoder without [CLS]: says why, and which methods do apply."""
    free = [name for name, cls in _METHODS.items() if CLS_SCORES not in cls.inputs]
    instead = (f" Or let {method} rank patches by the attention they receive: score=received (on the command "
               "line: --method-option score=received)." if has_setting(method, "score") else "")
    return UnsupportedModelError(
        f"{model}'s vision encoder ({encoder}) has no [CLS] token, so method {method!r}, which ranks patches by "
        f"the [CLS] token's attention, cannot run on it. Methods that need no [CLS] token: {', '.join(free)}.{instead}"
    )
