"""The demo as a library function (honest timings: a warm-up each, then interleaved timed runs, medians) and
the one tiny-model fallback that `show` and `web` use without --model."""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest

from fastervlm import demo
from fastervlm.cli import main
from fastervlm.errors import FasterVLMError
from fastervlm.methods import baseline_method, default_method


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, float]]:
    """Every run call of the pipeline: (method, max_new_tokens, time to first token)."""
    from fastervlm.pipeline import Pipeline

    seen: list[tuple[str, int, float]] = []
    real = Pipeline.run

    def record(self, frames, questions, pruner, generation=None):  # noqa: ANN001, ANN202
        answers = real(self, frames, questions, pruner, generation)
        seen.append((pruner.name, generation.max_new_tokens, answers[0].time_to_first_token))
        return answers

    monkeypatch.setattr(Pipeline, "run", record)
    return seen


def test_run_demo_warms_up_then_interleaves_and_reports_medians(tiny_root, calls) -> None:
    result = demo.run_demo(tiny_root, reduction=0.75, max_new_tokens=3, repeats=4)
    base, pruned = baseline_method(), default_method(True)
    assert [(name, tokens) for name, tokens, _ in calls] == [(base, 3), (pruned, 3)] + [(base, 1), (pruned, 1)] * 4
    assert [row.label for row in result.rows] == [base, f"{pruned} r=0.75"]
    timed = calls[2:]
    for offset, row in enumerate(result.rows):
        times = [ttft for _, _, ttft in timed[offset::2]]
        assert (row.ttft.median, row.ttft.low, row.ttft.high) == (statistics.median(times), min(times), max(times))
        assert len(row.answer.output_ids) == 3  # the shown answer is the full-length (warm-up) one
    assert result.speedup == pytest.approx(result.rows[0].ttft.median / result.rows[1].ttft.median)
    assert result.rows[1].answer.visual_tokens == 8 * 16 < result.rows[0].answer.visual_tokens == 8 * 64


def test_demo_command_prints_medians_and_what_the_tiny_model_can_show(capsys, tiny_root) -> None:
    assert main(["demo", "--cache-dir", str(tiny_root), "--max-new-tokens", "2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "speedup in time to first token: x" in out and "medians of 2 interleaved runs" in out
    assert out.count("time to first token") == 3 and demo.TOY_NOTE in out
    assert main(["demo", "--cache-dir", str(tiny_root), "--max-new-tokens", "2", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(row["ttft_median"] > 0 for row in rows.values())


def test_demo_refuses_zero_repeats(capsys, tmp_path) -> None:
    assert main(["demo", "--cache-dir", str(tmp_path / "cache"), "--repeats", "0"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    with pytest.raises(FasterVLMError, match="repeats must be at least 1"):
        demo.run_demo(tmp_path / "cache", repeats=0)


class Fallback(FasterVLMError):
    """Raised by the stand-in fallback: proves which function a command called."""


@pytest.mark.parametrize("command", [
    ["show", "--video", "{video}", "--out", "{tmp}/kept.png", "--keep", "3"],
    pytest.param(["web"], marks=pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs gradio")),
])
def test_show_and_web_without_model_use_the_one_tiny_fallback(monkeypatch, capsys, tmp_path, synthetic_video,
                                                              command: list[str]) -> None:
    asked = []

    def fallback(**options):  # noqa: ANN003, ANN202
        asked.append(options)
        raise Fallback("the tiny fallback was asked for")

    monkeypatch.setattr(demo, "tiny_pipeline", fallback)
    argv = [part.format(video=synthetic_video, tmp=tmp_path) for part in command]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "the tiny fallback was asked for" in capsys.readouterr().err
    assert asked == [{"device": "cpu", "dtype": None}]
