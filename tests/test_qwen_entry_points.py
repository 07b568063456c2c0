"""The Qwen-VL families through the commands: `fastervlm answer --model`, `eval predict` (its grouped, batched
records equal each item answered alone, with videos whose grids differ in one batch), `bench --model` and `show`
(each answer drawn on its own rows x cols grid)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import QWEN_FAMILIES, checkpoint, one_thread  # noqa: F401  (autouse)
from PIL import Image

import fastervlm
from fastervlm.cli import main
from fastervlm.eval.benchmarks import BENCHMARKS, load_items, video_path
from fastervlm.eval.predict import predict_items, prepare_run
from fastervlm.models.base import GenerationSettings
from fastervlm.show import Layout, answer_header, render_answer, veiled
from fastervlm.show.panels import outline_width

SHORT = GenerationSettings(max_new_tokens=3)
RECEIVED = ["--method-option", "score=received"]
QUESTIONS = [("wide", "What is moving?"), ("tall", "Which colour is the square in the corner?"), ("wide", "Why?"),
             ("tall", "Is it day?"), ("square", "What happens first in the video?")]


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MSVD-like benchmark with three videos of different shapes (so different grids)."""
    from fastervlm.tiny.video import write_synthetic_video

    from eval_helpers import write_questions

    root = tmp_path_factory.mktemp("qwen-data")
    videos = write_questions(root, QUESTIONS)
    for seed, (video, (height, width)) in enumerate({"wide": (48, 96), "tall": (80, 48), "square": (96, 96)}.items()):
        write_synthetic_video(videos / f"{video}.mp4", num_frames=12, height=height, width=width, seed=seed)
    return root


def test_answer_command(path: Path, synthetic_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["answer", "--model", str(path), "--video", str(synthetic_video), "--question", "What is moving?",
                 "--device", "cpu", "--max-new-tokens", "3", "--keep", "2", *RECEIVED, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens_per_frame"] == [2] * 8 and result["visual_tokens"] == 16  # 16 frames: 8 temporal patches
    assert len(result["frame_indices"]) == 16 and len(result["grid"]) == 2
    assert result["method"]["score"] == "received"


@pytest.mark.parametrize("method, settings", [("none", {}), ("fastervlm", {"keep": 2, "score": "received"}),
                                              ("pool", {"keep": 2}), ("vidcom2", {"keep": 2}), ("fastv", {"keep": 1})])
def test_eval_predict_answers_as_each_item_alone(path: Path, data_root: Path, tmp_path: Path, method: str,
                                                 settings: dict) -> None:
    """Grouped, batched across videos whose grids differ, each video's prompt prefix shared: the same answers as
    each item alone with its prompt prefilled whole (share_prefix=False)."""
    from fastervlm.llm import TransformersLLM

    pipeline = fastervlm.load(path, device="cpu")
    whole = fastervlm.Pipeline(pipeline.adapter, pipeline.path, TransformersLLM(pipeline.adapter, share_prefix=False))
    pruner = pipeline.pruner(method, **settings)
    loaded = load_items(BENCHMARKS["msvd"], data_root)
    run = prepare_run(pipeline, loaded, data_root, pruner, SHORT, out=tmp_path)
    summary = predict_items(pipeline, run, loaded, data_root, pruner, SHORT, batch_size=3, progress=False)
    assert (summary.done, summary.errors, summary.tower_runs) == (5, 0, 3)
    records, grids = run.predictions(), set()
    for item in loaded.items:
        frames = whole.frames(video=video_path(loaded.benchmark, data_root, item))
        (alone,) = whole.run([frames], [item.question], pruner, SHORT)
        record = records[item.id]
        assert (record["pred"], record["output_ids"], record["tokens_per_frame"], record["visual_tokens"]) == (
            alone.text, alone.output_ids, alone.tokens_per_frame, alone.visual_tokens)
        grids.add(alone.grid)
    assert len(grids) == 3  # three video shapes, three grids: batches mixed them
    shared = [record["prefix_tokens"] for record in records.values()]
    assert all(shared) if method != "fastv" else not any(shared)  # FastV prefills whole prompts


def test_eval_predict_command(path: Path, data_root: Path, tmp_path: Path) -> None:
    from fastervlm.eval.rundir import RunDir

    assert main(["eval", "predict", "--benchmarks", "msvd", "--data-root", str(data_root), "--model", str(path),
                 "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--max-new-tokens", "2", "--no-progress",
                 "--keep", "2", *RECEIVED]) == 0
    records = RunDir(tmp_path / "run").predictions()
    assert len(records) == 5 and not any("error" in record for record in records.values())
    assert {record["visual_tokens"] for record in records.values()} == {16}  # 2 per temporal patch, 8 of them


def test_bench_command(path: Path, synthetic_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--model", str(path), "--device", "cpu", "--video", str(synthetic_video), "--methods",
                 "fastervlm", "fastv", "--reductions", "0.5", *RECEIVED, "--warmup", "0", "--repeats", "1",
                 "--max-new-tokens", "2", "--in-process", "--no-progress", "--out-dir", str(tmp_path), "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    none, pruned, fastv = rows
    assert none["visual_tokens"] > pruned["visual_tokens"] == fastv["visual_tokens"]
    assert pruned["llm_prefill_flops"] < fastv["llm_prefill_flops"] < none["llm_prefill_flops"]


def test_show_draws_each_answer_on_its_own_grid(path: Path, data_root: Path, tmp_path: Path) -> None:
    """The command's picture is render_answer's; in it, each frame's rows x cols cells of the resized frame show the
    kept tokens as the model saw them and veil the pruned ones."""
    pipeline = fastervlm.load(path, device="cpu")
    video = data_root / BENCHMARKS["msvd"].folder / "videos" / "wide.mp4"
    out = tmp_path / "kept.png"
    assert main(["show", "--model", str(path), "--device", "cpu", "--video", str(video), "--out", str(out),
                 "--scale", "1", "--keep", "2", "--no-heatmap", *RECEIVED]) == 0
    frames = pipeline.frames(video=video)
    answer = pipeline.run([frames], ["q"], pipeline.pruner("fastervlm", keep=2, score="received"),
                          GenerationSettings(max_new_tokens=1))[0]
    rows, cols = answer.grid
    seen = pipeline.display_frames(frames)
    cell = seen.shape[1] // rows
    assert rows != cols and seen.shape[:3] == (8, rows * cell, cols * cell)
    header = answer_header(pipeline, answer, heatmap=False)
    assert any("padding" in item.text for item in header.legend)
    side = max(rows, cols) * cell
    layout = Layout(scale=1).fit_header(header, 8, side)
    with Image.open(out) as picture:
        drawn = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(render_answer(pipeline, frames, answer, heatmap=False,
                                                                  layout=Layout(scale=1))))
    width = outline_width(cell)
    for t, kept in enumerate(answer.kept_indices):
        left, top, _, _ = layout.tile_box(t, side)
        for index in range(rows * cols):
            r, c = divmod(index, cols)
            box = (slice(r * cell + width, (r + 1) * cell - width), slice(c * cell + width, (c + 1) * cell - width))
            shown = drawn[top:, left:][box].astype(np.float32)
            source = seen[t][box].astype(np.float32)
            expected = source if index in kept else np.rint(veiled(source))
            np.testing.assert_array_equal(shown, expected)


def test_web_page_starts_and_answers_with_a_method_it_can_run(path: Path, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason='needs the [web] extra: pip install "fastervlm[web]"')
    from fastervlm.web.app import build_app, default_configurations, warm_up
    from fastervlm.web.settings import WebSettings

    pipeline = fastervlm.load(path, device="cpu")
    pruned, unpruned = default_configurations(pipeline)
    assert pruned.settings == {"score": "received"} and unpruned.value is None  # no [CLS]: the received score
    build_app(pipeline, WebSettings(), tmp_path)
    warm_up(pipeline, tmp_path / "sample.mp4", WebSettings())  # answers the sample pruned and not
