"""Shared fixtures: the tiny checkpoint (written once per session), its loaded pipeline, a synthetic video."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub in tests
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# One cache for the whole session (tiny checkpoints, judge cache), inherited by the commands tests start: nothing
# read from or left in the user's ~/.cache, so a judgment cached by an earlier run can never answer for a test.
CACHE = Path(tempfile.mkdtemp(prefix="fastervlm-test-cache-"))
os.environ["FASTERVLM_CACHE"] = str(CACHE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(CACHE, ignore_errors=True)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_root() -> Path:
    """The session's cache folder ($FASTERVLM_CACHE) for tiny checkpoints and videos."""
    return CACHE


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_root: Path) -> Path:
    """The default tiny Video-LLaVA checkpoint folder (original on-disk format)."""
    from fastervlm.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(cache_dir=tiny_root)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint: Path):
    """The tiny checkpoint loaded once on the CPU (fp32)."""
    import fastervlm

    return fastervlm.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def synthetic_video(tiny_root: Path) -> Path:
    """A small H.264 MP4 with moving objects."""
    from fastervlm.media import write_synthetic_video

    return write_synthetic_video(tiny_root / "synthetic.mp4")


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """../shared/benchmarks beside the checkout (read-only; never copied into the repo)."""
    path = SHARED / "benchmarks"
    if not path.is_dir():
        pytest.skip(f"{path} is not present")
    return path
