"""Imports every built-in adapter so that each registers itself. Add new families here."""

from fastervlm.models import videollava  # noqa: F401
from fastervlm.models import hf_llava, hf_llava_next_video, hf_video_llava  # noqa: F401
from fastervlm.models import hf_no_cls  # noqa: F401  (last: claims only what no family above runs)
