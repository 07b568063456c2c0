"""The web page's library layer, in-process (no server): `ask` equals the pipeline called directly, limits and
form values give clear errors, the command checks its flags, and nothing but `fastervlm web` imports gradio."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from fastervlm.cli import main
from fastervlm.errors import BudgetError, FasterVLMError, MediaError
from fastervlm.web import ask as asking
from fastervlm.web.settings import WebSettings

PRUNED = asking.Configuration("fastervlm", asking.BUDGET_REDUCTION, 0.9)
UNPRUNED = asking.Configuration("none", asking.BUDGET_NONE, None)


def test_ask_is_the_pipeline_on_frames_decoded_once(tiny_pipeline, synthetic_video: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fastervlm.models.base import GenerationSettings
    from fastervlm.show import render_answer

    decoded = []
    frames_of = tiny_pipeline.frames
    monkeypatch.setattr(tiny_pipeline, "frames", lambda **kw: decoded.append(kw) or frames_of(**kw))
    steps: list[float] = []
    outcomes = asking.ask(tiny_pipeline, synthetic_video, "What moves?", [PRUNED, UNPRUNED], WebSettings(),
                          max_new_tokens=5, progress=lambda fraction, text: steps.append(fraction))
    assert len(decoded) == 1, "both configurations must share one decode"
    assert steps == sorted(steps) and steps[-1] <= 1.0

    frames = frames_of(video=synthetic_video)
    generation = GenerationSettings(max_new_tokens=5)
    heatmap = outcomes[0].answer.cls_scores  # the unpruned configuration does not compute it: the page borrows it
    for outcome, configuration in zip(outcomes, (PRUNED, UNPRUNED)):
        pruner = tiny_pipeline.pruner(configuration.method, **configuration.method_settings())
        direct = tiny_pipeline.run([frames], ["What moves?"], pruner, generation)[0]
        assert (outcome.answer.text, outcome.answer.visual_tokens, outcome.answer.kept_indices) == (
            direct.text, direct.visual_tokens, direct.kept_indices)
        assert outcome.picture is not None and outcome.no_picture is None
        assert outcome.picture.size == render_answer(tiny_pipeline, frames, direct, cls_scores=heatmap).size
    pruned, full = outcomes
    assert pruned.answer.visual_tokens < full.answer.visual_tokens == tiny_pipeline.num_frames * tiny_pipeline.num_patches


def test_speedup_is_the_ratio_of_times_to_first_token(tiny_pipeline, synthetic_video: Path) -> None:
    pruned, full = asking.ask(tiny_pipeline, synthetic_video, "What moves?", [PRUNED, UNPRUNED], WebSettings(),
                              max_new_tokens=1)
    before_decoding = ("decode_video", "llm_decode")
    a, b = (sum(t for stage, t in o.answer.timings.items() if stage not in before_decoding) for o in (pruned, full))
    assert pruned.answer.time_to_first_token == pytest.approx(a)
    text = asking.speedup_markdown(pruned, full)
    assert f"{b / a:.2f}×" in text
    assert f"{pruned.answer.visual_tokens} instead of {full.answer.visual_tokens}" in text
    summary = asking.summary_markdown(pruned)
    assert f"**{pruned.answer.visual_tokens} visual tokens**" in summary and "llm_prefill" in summary


def test_configuration_turns_the_form_into_method_settings() -> None:
    assert asking.Configuration("fastervlm", asking.BUDGET_REDUCTION, 0.9).method_settings() == {"reduction": 0.9}
    assert asking.Configuration("fastervlm", asking.BUDGET_KEEP, 6.0, {"global_budget": True}).method_settings() == {
        "keep": 6, "global_budget": True}
    assert asking.Configuration("none", asking.BUDGET_NONE, 0.5).method_settings() == {}
    for bad, words in [
        (asking.Configuration("fastervlm", asking.BUDGET_KEEP, 1.5), "whole number"),
        (asking.Configuration("fastervlm", asking.BUDGET_REDUCTION, None), "give a value"),
        (asking.Configuration("fastervlm", asking.BUDGET_REDUCTION, 0.9, {"keep": 3}), "budget control"),
        (asking.Configuration("fastervlm", "half", 0.5), "unknown budget"),
    ]:
        with pytest.raises(BudgetError, match=words):
            bad.method_settings()
    assert asking.Configuration("fastervlm", asking.BUDGET_REDUCTION, 0.9, {"global_budget": False}).label() == "fastervlm r=0.9"
    assert "global_budget=True" in asking.Configuration("fastervlm", asking.BUDGET_KEEP, 6, {"global_budget": True}).label()


def test_settings_box_parses_json_objects_only() -> None:
    assert asking.parse_settings("") == {} and asking.parse_settings('{"layer": 3}') == {"layer": 3}
    for text in ("layer=3", "[1, 2]", "{"):
        with pytest.raises(BudgetError, match="JSON object"):
            asking.parse_settings(text)


def test_method_defaults_are_the_registry_settings_it_accepts() -> None:
    from fastervlm.methods import create_pruner, list_methods

    assert asking.method_names() == list(list_methods())
    for name, cls in list_methods().items():
        defaults = asking.method_defaults(name)
        assert set(defaults) <= {f.name for f in fields(cls) if f.init} - asking.BUDGETED
        assert create_pruner(name, **defaults).settings()["method"] == name


def test_limits_are_checked_before_decoding(tmp_path: Path, synthetic_video: Path) -> None:
    from fastervlm.tiny.video import write_synthetic_video

    assert asking.check_video(synthetic_video, WebSettings()) == synthetic_video
    with pytest.raises(MediaError, match="no video"):
        asking.check_video(None, WebSettings())
    with pytest.raises(MediaError, match="--max-upload-mb"):
        asking.check_video(synthetic_video, WebSettings(max_upload_mb=synthetic_video.stat().st_size / 2**20 / 2))
    long = write_synthetic_video(tmp_path / "long.mp4", num_frames=40, fps=8, height=32, width=32)
    assert asking.video_seconds(long) == pytest.approx(5.0, abs=0.2)
    with pytest.raises(MediaError, match="lasts 5 s.*--max-video-seconds"):
        asking.check_video(long, WebSettings(max_video_seconds=4))


def test_bad_uploads_name_the_file_not_the_server_path(tiny_pipeline, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    with pytest.raises(MediaError, match="notes.txt is not a video") as caught:
        asking.ask(tiny_pipeline, text, "What moves?", [PRUNED], WebSettings())
    assert str(tmp_path) not in str(caught.value)


def test_empty_question_is_refused(tiny_pipeline, synthetic_video: Path) -> None:
    with pytest.raises(FasterVLMError, match="question is empty"):
        asking.ask(tiny_pipeline, synthetic_video, "  ", [PRUNED], WebSettings())


@pytest.mark.parametrize("flags, words", [
    (["--port", "0"], "--port 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_web_command_refuses_bad_flags_before_loading(flags: list[str], words: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["web", *flags]) == 2
    assert words in capsys.readouterr().err


def test_only_the_web_command_imports_gradio() -> None:
    code = (
        "import sys, contextlib, io\n"
        "import fastervlm, fastervlm.pipeline, fastervlm.web.ask, fastervlm.web.results\n"
        "from fastervlm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['methods']) == 0\n"
        "assert 'gradio' not in sys.modules, 'gradio imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_web_command_without_gradio_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["web"]) == 2
    assert 'pip install "fastervlm[web]"' in capsys.readouterr().err


def test_web_command_refuses_an_image_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastervlm.tiny.hf import write_tiny_hf_checkpoint

    checkpoint = write_tiny_hf_checkpoint(tmp_path / "llava", "llava")
    assert main(["web", "--model", str(checkpoint), "--device", "cpu"]) == 2
    assert "image model" in capsys.readouterr().err


def test_page_runs_one_generation_at_a_time_and_sends_no_analytics(tiny_pipeline, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason='needs the [web] extra: pip install "fastervlm[web]"')
    from fastervlm.web.app import MODEL_QUEUE, build_app

    demo = build_app(tiny_pipeline, WebSettings(), tmp_path)
    assert demo.analytics_enabled is False
    endpoints = {fn.api_name: fn for fn in demo.fns.values()}
    assert {"ask", "results", "items"} <= set(endpoints)
    assert (endpoints["ask"].concurrency_limit, endpoints["ask"].concurrency_id) == (1, MODEL_QUEUE)
    assert (tmp_path / "sample.mp4").is_file(), "the bundled sample lives in the page's temporary folder"


def test_warm_up_ignores_the_upload_limits(tiny_pipeline, synthetic_video: Path) -> None:
    from fastervlm.web.app import warm_up

    tight = WebSettings(max_upload_mb=0.0001, max_video_seconds=0.5)
    with pytest.raises(MediaError):
        asking.check_video(synthetic_video, tight)
    warm_up(tiny_pipeline, synthetic_video, tight)  # the bundled sample is not an upload


def test_a_long_question_is_refused_before_decoding(tiny_pipeline, synthetic_video: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny_pipeline, "frames", lambda **kw: pytest.fail("decoded a video for a refused question"))
    settings = WebSettings(max_question_chars=50)
    with pytest.raises(FasterVLMError, match="the question is 51 characters long; this page takes questions up to "
                                             "50 characters .*--max-question-chars"):
        asking.ask(tiny_pipeline, synthetic_video, "x" * 51, [PRUNED], settings)
    asking.check_question("x" * 50, settings)  # at the bound: accepted


class _LibraryRefusal(FasterVLMError):
    """Any FasterVLMError the library may raise (e.g. a prompt longer than the LLM's context)."""


def test_the_page_shows_any_library_error_as_a_message(tiny_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio", reason='needs the [web] extra: pip install "fastervlm[web]"')
    from fastervlm.web import app

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise _LibraryRefusal("the prompt has 5000 tokens but the LLM's context is 4096: ask a shorter question")

    monkeypatch.setattr(asking, "ask", refuse)
    run = app.ask_handler(tiny_pipeline, WebSettings())
    outputs = run("clip.mp4", "q", "fastervlm", asking.BUDGET_REDUCTION, 0.9, "", False, "none", asking.BUDGET_NONE,
                  None, "", 4, progress=lambda *a, **k: None)
    assert outputs[0] == "**Error:** the prompt has 5000 tokens but the LLM's context is 4096: ask a shorter question"
    assert outputs[1:] == ("", "", None, "", "", None, "")


def test_the_page_asks_the_registry(tiny_pipeline) -> None:
    from fastervlm.methods import baseline_method, create_pruner, default_method, list_methods

    assert asking.typical_budgets(64) == {asking.BUDGET_REDUCTION: 0.9, asking.BUDGET_KEEP: 6, asking.BUDGET_NONE: None}
    assert asking.typical_budgets(256)[asking.BUDGET_KEEP] == 26
    for name, cls in list_methods().items():
        assert asking.keeps_every_token(name) == (cls.budget == "unbudgeted")
        assert create_pruner(name, **asking.method_defaults(name)).settings()["method"] == name
    pytest.importorskip("gradio", reason='needs the [web] extra: pip install "fastervlm[web]"')
    from fastervlm.web.app import default_configurations

    pruned, unpruned = default_configurations()
    assert (pruned.method, pruned.budget, pruned.value) == (default_method(True), asking.BUDGET_REDUCTION, 0.9)
    assert (unpruned.method, unpruned.budget) == (baseline_method(), asking.BUDGET_NONE)
