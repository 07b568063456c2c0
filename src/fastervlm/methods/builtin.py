"""Imports every method module of this package so that each registers itself: a new method is one new file.

Modules load in name order, which is the order `fastervlm methods` lists them in.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_NOT_METHODS = {"base", "builtin", "ranking", "registry"}


def _import_methods() -> None:
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if module.name not in _NOT_METHODS:
            importlib.import_module(f"fastervlm.methods.{module.name}")


_import_methods()
