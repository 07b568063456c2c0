"""`fastervlm show` refuses an output it could not write before the model runs, not after."""

from __future__ import annotations

import pytest

from fastervlm.cli import main


@pytest.mark.parametrize("outputs, message", [
    (["--out", "kept.xyz"], "Pillow cannot write .xyz"),
    (["--out", "kept"], "Pillow cannot write a file without an extension"),
    (["--out", "{tmp}/missing/kept.png"], "missing does not exist"),
    (["--out", "{tmp}/kept.png", "--animation", "{tmp}/missing/kept.gif"], "--animation"),
])
def test_bad_outputs_are_refused_before_the_model_loads(capsys, tmp_path, synthetic_video, outputs, message) -> None:
    outputs = [value.format(tmp=tmp_path) for value in outputs]
    missing_model = tmp_path / "no-such-checkpoint"  # would fail later, when the model loads
    code = main(["show", "--model", str(missing_model), "--video", str(synthetic_video), "--reduction", "0.9", *outputs])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "no-such-checkpoint" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_writable_jpeg_passes_the_check(capsys, tmp_path, tiny_checkpoint, synthetic_video) -> None:
    out = tmp_path / "kept.jpg"
    assert main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--keep", "4", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "32 visual tokens kept" in capsys.readouterr().err
