"""Imports every built-in method module so that each registers itself. Add new methods here."""

from fastervlm.methods import fastervlm, none  # noqa: F401
