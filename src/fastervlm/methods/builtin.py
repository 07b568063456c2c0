"""Imports every built-in method module so that each registers itself. Add new methods here."""

from fastervlm.methods import fastervlm, fastv, none, pool, random_tokens  # noqa: F401
