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

SHARED_BENCHMARKS_ENV = "FASTERVLM_SHARED_BENCHMARKS"
"""Opt-in: a folder with the seed's real 1K question/answer files (TGIF_Zero_Shot_QA/, ...); tests marked
shared_data(SHARED_BENCHMARKS_ENV) run only when it is set. `.ci/run` sets it when those files are beside the
checkout."""
SHARED_SPEC_ENV = "FASTERVLM_SHARED_SPEC"
"""Opt-in: the path of fastervlm-video-spec.md, to compare the judge prompt with the spec's text."""

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
    from fastervlm.tiny.video import write_synthetic_video

    return write_synthetic_video(tiny_root / "synthetic.mp4")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "shared_data(variable): needs files outside the repository, named by the "
                            "environment variable; deselected (not skipped) when the variable is unset")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Opt-in tests leave the default run without a skip: nothing outside the repository is needed."""
    opted_out = [item for item in items
                 if (mark := item.get_closest_marker("shared_data")) is not None and not os.environ.get(mark.args[0])]
    if opted_out:
        config.hook.pytest_deselected(items=opted_out)
        items[:] = [item for item in items if item not in opted_out]


def shared_path(variable: str) -> Path:
    """The opt-in path an environment variable names; a set variable that names nothing is an error, not a skip."""
    path = Path(os.environ[variable]).expanduser()
    if not path.exists():
        pytest.fail(f"{variable}={path} does not exist: unset it, or point it at the real files")
    return path


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """The real 1K question/answer files ($FASTERVLM_SHARED_BENCHMARKS; read-only, never copied into the repo)."""
    return shared_path(SHARED_BENCHMARKS_ENV)


@pytest.fixture(scope="session")
def sample_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --data-root with a handful of items per built-in benchmark in the real schema (no videos)."""
    from eval_helpers import write_sample_benchmarks

    root = tmp_path_factory.mktemp("sample-benchmarks")
    write_sample_benchmarks(root)
    return root
