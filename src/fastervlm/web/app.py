"""The page: gr.Blocks wiring `ask.py` and `results.py` to components, and `serve` that runs it.

Gradio is imported here only. Handlers turn `FasterVLMError` into a message in the page; anything else is
logged on the server with its traceback and shown as a one-line internal error. Generation goes through the
queue one request at a time (one model, one concurrency group).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.web import ask as asking
from fastervlm.web.results import ResultsView, load_results
from fastervlm.web.settings import WebSettings

log = logging.getLogger("fastervlm.web")

SAMPLE_QUESTION = "What is moving in the video?"
MODEL_QUEUE = "model"
"""Concurrency group of every event that runs the model: one generation at a time."""
CSS = """
#report-table { overflow-x: auto; }
#report-table table { width: 100%; }
#report-table th, #report-table td { word-break: normal; overflow-wrap: normal; hyphens: manual; padding: 4px 6px; }
"""
"""The report table spans the page and breaks lines between words only (a number or a run name never splits); a
table wider than the page scrolls sideways instead."""


def _message(error: BaseException) -> str:
    """What the page shows for a failed request: the library's message, never a traceback."""
    if isinstance(error, FasterVLMError):
        return f"**Error:** {error}"
    log.error("internal error in the web page:\n%s", "".join(traceback.format_exception(error)))
    return f"**Error:** internal error ({type(error).__name__}); the server's log has the details."


def _config(method: str, budget: str, value: float | None, settings_text: str) -> asking.Configuration:
    return asking.Configuration(method, budget, value, asking.parse_settings(settings_text))


def _settings_text(method: str) -> str:
    defaults = asking.method_defaults(method)
    return json.dumps(defaults) if defaults else ""


def ask_handler(pipeline: Any, settings: WebSettings) -> Callable[..., tuple]:
    """The Ask button: (video, question, config A..., compare, config B..., max new tokens) -> 8 outputs."""
    import gradio as gr

    def run(video, question, method_a, budget_a, value_a, settings_a, compare, method_b, budget_b, value_b,
            settings_b, max_new_tokens, progress=gr.Progress()):  # noqa: ANN001, B008  (gradio reads the signature)
        try:
            configurations = [_config(method_a, budget_a, value_a, settings_a)]
            if compare:
                configurations.append(_config(method_b, budget_b, value_b, settings_b))
            outcomes = asking.ask(pipeline, video, question, configurations, settings, max_new_tokens=max_new_tokens,
                                  progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as error:  # noqa: BLE001  (shown in the page, logged when unexpected)
            return (_message(error), "", "", None, "", "", None, "")
        first = outcomes[0]
        second = outcomes[1] if len(outcomes) > 1 else None
        status = f"Answered from frames {first.answer.frame_indices} of the video."
        return (
            status,
            first.answer.text, asking.summary_markdown(first), first.picture,
            second.answer.text if second else "", asking.summary_markdown(second) if second else "",
            second.picture if second else None,
            asking.speedup_markdown(first, second) if second else "",
        )

    return run


def default_configurations(pipeline: Any = None) -> tuple[asking.Configuration, asking.Configuration]:
    """What the page starts from (and warms up with): the registry's default method at reduction 0.9 (ranking by
    the received attention where the model has no [CLS] token and the method can), and the baseline that keeps
    every token."""
    from fastervlm.errors import UnsupportedModelError
    from fastervlm.methods import baseline_method, create_pruner, default_method, has_setting

    method, settings = default_method(True), {}
    if pipeline is not None and has_setting(method, "score"):
        try:
            pipeline.check_method(create_pruner(method, reduction=asking.TYPICAL_REDUCTION))
        except UnsupportedModelError:
            settings = {"score": "received"}
    return (asking.Configuration(method, settings=settings),
            asking.Configuration(baseline_method(), asking.BUDGET_NONE, None))


def _configuration_controls(suffix: str, start: asking.Configuration, num_patches: int) -> list:
    """Method dropdown, budget kind and value, and the method's other settings as JSON."""
    import gradio as gr

    with gr.Row():
        method_box = gr.Dropdown(asking.method_names(), value=start.method, label="Method", elem_id=f"method-{suffix}")
        budget_box = gr.Radio(list(asking.BUDGET_KINDS), value=start.budget, label="Budget", elem_id=f"budget-{suffix}")
    with gr.Row():
        of = num_patches or "a number that depends on the video"
        value_box = gr.Number(value=start.value, label=f"Reduction (0-1) or tokens kept per frame (of {of})",
                              elem_id=f"value-{suffix}")
        settings_box = gr.Textbox(_settings_text(start.method), label="Method settings (JSON)",
                                  elem_id=f"settings-{suffix}")
    typical = asking.typical_budgets(num_patches)

    def on_method(name: str) -> tuple:
        budget_update = gr.update(value=asking.BUDGET_NONE) if asking.keeps_every_token(name) else gr.update()
        return _settings_text(name), budget_update

    method_box.change(on_method, method_box, [settings_box, budget_box], queue=False, api_visibility="private")
    budget_box.change(lambda kind: typical[kind], budget_box, value_box, queue=False, api_visibility="private")
    return [method_box, budget_box, value_box, settings_box]


def _result_outputs(suffix: str) -> list:
    """Answer, token counts with stage timings, and the kept-token picture of one configuration."""
    import gradio as gr

    answer = gr.Textbox(label="Answer", interactive=False, lines=2, elem_id=f"answer-{suffix}")
    stats = gr.Markdown(elem_id=f"stats-{suffix}")
    picture = gr.Image(label="Kept tokens", show_label=False, type="pil", interactive=False, elem_id=f"picture-{suffix}",
                       format="png")
    return [answer, stats, picture]


def ask_tab(pipeline: Any, settings: WebSettings, sample_video: Path) -> None:
    """Video and question on top; configuration A and (with the switch) B side by side, each with its results."""
    import gradio as gr

    question = gr.Textbox(label="Question", info=f"up to {settings.max_question_chars:,} characters",
                          placeholder=SAMPLE_QUESTION, elem_id="question", render=False)
    with gr.Row(equal_height=False):
        with gr.Column():
            video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=240)
            gr.Examples([[str(sample_video), SAMPLE_QUESTION]], [video, question], label="Sample (synthetic video)")
        with gr.Column():
            question.render()
            with gr.Row():
                compare = gr.Checkbox(label="Compare with a second configuration on the same frames", value=False,
                                      elem_id="compare")
                max_new_tokens = gr.Number(value=settings.generation.max_new_tokens, precision=0, minimum=1,
                                           label="Max new tokens", elem_id="max-new-tokens")
            button = gr.Button("Ask", variant="primary", elem_id="ask")
            message = gr.Markdown(elem_id="message")
            speedup = gr.Markdown(elem_id="speedup")
    pruned, unpruned = default_configurations(pipeline)
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            gr.Markdown("### Configuration A")
            controls_a = _configuration_controls("a", pruned, pipeline.num_patches)
            outputs_a = _result_outputs("a")
        with gr.Column(variant="panel", visible=False) as column_b:
            gr.Markdown("### Configuration B")
            controls_b = _configuration_controls("b", unpruned, pipeline.num_patches)
            outputs_b = _result_outputs("b")
    compare.change(lambda on: gr.update(visible=on), compare, column_b, queue=False, api_visibility="private")
    inputs = [video, question, *controls_a, compare, *controls_b, max_new_tokens]
    outputs = [message, *outputs_a, *outputs_b, speedup]
    gr.on([button.click, question.submit], ask_handler(pipeline, settings), inputs, outputs, api_name="ask",
          concurrency_limit=1, concurrency_id=MODEL_QUEUE, show_progress="full")


def results_handler(plot_dir: Path) -> Callable[..., tuple]:
    """Load a runs folder: message, report table, plot, the group choices, the view (kept in gr.State), items."""
    import gradio as gr

    def load(runs_dir: str, judge_model: str, mode: str) -> tuple:
        try:
            view = load_results(runs_dir, tempfile.mkdtemp(dir=plot_dir), judge_model=judge_model.strip() or None,
                                mode=mode)
        except Exception as error:  # noqa: BLE001  (shown in the page, logged when unexpected)
            return _message(error), "", None, gr.update(choices=[], value=None), None, _table(None, None, False)
        first = next(iter(view.groups), None)
        return ("", view.markdown(), str(view.plot) if view.plot else None,
                gr.update(choices=list(view.groups), value=first), view, _table(view, first, False))

    return load


def _table(view: ResultsView | None, group: str | None, only_disagreements: bool) -> Any:
    """The per-item rows of one group as a DataFrame (an empty one before a folder is loaded)."""
    import pandas as pd

    if view is None or group not in view.groups:
        return pd.DataFrame()
    chosen = view.groups[group]
    return pd.DataFrame(chosen.rows(only_disagreements), columns=chosen.columns())


def results_tab(settings: WebSettings, plot_dir: Path) -> None:
    import gradio as gr

    with gr.Row():
        runs_dir = gr.Textbox(str(settings.runs_dir or ""), label="Runs folder (what `fastervlm eval predict --out` wrote)",
                              elem_id="runs-dir", scale=4)
        judge_model = gr.Textbox("", label="Judge model (empty: the one the runs were judged by)", elem_id="judge-model", scale=2)
        mode = gr.Radio(["strict", "compat"], value="strict", label="Metrics", elem_id="mode", scale=1)
    button = gr.Button("Load", variant="primary", elem_id="load-results")
    message = gr.Markdown(elem_id="results-message")
    table = gr.Markdown(elem_id="report-table")  # the page's full width: 14 columns for four benchmarks
    plot = gr.Image(label="Accuracy and score vs visual tokens (95% intervals)", show_label=False, type="filepath",
                    interactive=False, elem_id="report-plot")  # the figure has its own title, which a label would hide
    with gr.Row():
        group = gr.Dropdown([], label="Model / benchmark", elem_id="group")
        only = gr.Checkbox(label="Only items where the configurations disagree", elem_id="disagree")
    browser = gr.Dataframe(label="Items", interactive=False, wrap=True, elem_id="items")
    view = gr.State()
    button.click(results_handler(plot_dir), [runs_dir, judge_model, mode], [message, table, plot, group, view, browser],
                 api_name="results")
    gr.on([group.change, only.change], _table, [view, group, only], browser, api_name="items")


def build_app(pipeline: Any, settings: WebSettings, work_dir: Path) -> Any:
    """The page for a loaded pipeline; `work_dir` holds the sample video and report plots."""
    import gradio as gr

    from fastervlm.tiny.identity import model_name, model_title
    from fastervlm.tiny.video import write_synthetic_video

    sample = write_synthetic_video(work_dir / "sample.mp4")
    plot_dir = work_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    with gr.Blocks(title=f"fastervlm · {model_name(pipeline.path)}", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## fastervlm · {model_title(pipeline.path)}\n{pipeline.num_frames} frames × "
                    f"{pipeline.num_patches or 'input-sized grids of'} patches per video; ask a question, see which "
                    "visual tokens each "
                    "pruning configuration keeps and what it saves.")
        with gr.Tab("Ask", elem_id="tab-ask"):
            ask_tab(pipeline, settings, sample)
        with gr.Tab("Results", elem_id="tab-results"):
            results_tab(settings, plot_dir)
    return demo


def warm_up(pipeline: Any, sample: Path, settings: WebSettings) -> None:
    """Answer the sample once, pruned and not, so that the first visitor's timings are not the first call's."""
    from dataclasses import replace

    unlimited = replace(settings, max_upload_mb=float("inf"), max_video_seconds=float("inf"))  # the page's limits are for uploads
    asking.ask(pipeline, sample, SAMPLE_QUESTION, list(default_configurations(pipeline)), unlimited, max_new_tokens=2)


def serve(pipeline: Any, settings: WebSettings, *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the page until Ctrl-C (or SIGTERM); uploads, the sample and plots live in one temporary folder that
    is deleted on the way out. No share link, no analytics."""
    import signal

    work_dir = Path(tempfile.mkdtemp(prefix="fastervlm-web-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "uploads")  # read by gradio when the app starts
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo = build_app(pipeline, settings, work_dir)
        warm_up(pipeline, work_dir / "sample.mp4", settings)
        demo.queue(default_concurrency_limit=1)
        try:
            demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
                        quiet=True, prevent_thread_lock=True, max_file_size=settings.max_upload_bytes, css=CSS,
                        allowed_paths=[str(work_dir)], ssr_mode=False, mcp_server=False, pwa=False,
                        enable_monitoring=False)
        except OSError as err:
            raise FasterVLMError(f"cannot serve on {host}:{port} ({err}): choose another --port.") from err
        print(f"fastervlm web: serving {demo.local_url} (Ctrl-C stops it; temporary folder {work_dir})", flush=True)
        demo.block_thread()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
