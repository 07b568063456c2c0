"""Shared fixtures: the tiny checkpoint (written once per session), its loaded pipeline, a synthetic video."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub in tests
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session cache folder for tiny checkpoints and videos."""
    return tmp_path_factory.mktemp("fastervlm-cache")


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
