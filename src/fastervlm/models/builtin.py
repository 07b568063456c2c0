"""Imports every module of this package so that each adapter registers itself: a new family is one new file
(plus its tiny spec). Families that only explain a refusal declare `fallback = True` and are asked last."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def _import_adapters() -> None:
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if module.name != "builtin":
            importlib.import_module(f"fastervlm.models.{module.name}")


_import_adapters()
