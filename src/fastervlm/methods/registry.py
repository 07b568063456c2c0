"""The method registry: create_pruner("fastervlm", reduction=0.9), list_methods()."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fastervlm.errors import BudgetError
from fastervlm.methods.base import Pruner

_METHODS: dict[str, type[Pruner]] = {}


def register(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: make a method available by its `name`."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> dict[str, type[Pruner]]:
    """Every registered method by name, in registration order."""
    _load_builtin_methods()
    return dict(_METHODS)


def create_pruner(name: str, **settings: Any) -> Pruner:
    """Build a method by name; settings left out take the method's defaults, unknown ones are an error."""
    methods = list_methods()
    if name not in methods:
        raise BudgetError(f"unknown method {name!r}; choose one of: {', '.join(methods)} (see `fastervlm methods`).")
    cls = methods[name]
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise BudgetError(f"method {name!r} has no setting {', '.join(unknown)}; its settings are: {', '.join(sorted(known))}.")
    return cls(**settings)


def _load_builtin_methods() -> None:
    """Import the method modules once so that their @register decorators run."""
    from fastervlm.methods import builtin  # noqa: F401
