"""Imports every built-in adapter so that each registers itself. Add new families here."""

from fastervlm.models import videollava  # noqa: F401
