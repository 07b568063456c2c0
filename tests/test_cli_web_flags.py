"""`fastervlm web --runs` must name an existing folder, checked before the model loads."""

from __future__ import annotations

import importlib.util

import pytest

from fastervlm.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs the [web] extra (gradio)")


def test_a_missing_runs_folder_is_refused_before_loading(capsys, tmp_path) -> None:
    missing = tmp_path / "runs"
    code = main(["web", "--model", str(tmp_path / "no-such-checkpoint"), "--runs", str(missing)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--runs {missing} is not a folder" in err
    assert "loading" not in err and "no-such-checkpoint" not in err


def test_loading_is_announced_before_the_model_loads(capsys, tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    code = main(["web", "--model", str(tmp_path / "no-such-checkpoint"), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2  # the existing runs folder passes; the missing checkpoint is what fails
    assert err.index("fastervlm web: loading") < err.index("does not exist")
