"""`fastervlm bench --eval` and `--decode`: the synthetic benchmark, the loop against the harness (identical
predictions, tower runs counted), the table's columns, the mode flags. No timing assertions."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import av
import pytest
import torch

from fastervlm.bench import harness
from fastervlm.bench.synthetic import VideoShape, write_synthetic_benchmark
from fastervlm.cli import main

SMALL = ["--size", "64x48", "--duration", "1", "--fps", "10", "--max-new-tokens", "3", "--device", "cpu",
         "--no-progress"]
EVAL_HEADER = ("| run | items | seconds (rounds) | items/s | speedup (min-max) | video encodings | decode video | "
               "vision encoder | [CLS] scoring | selection | projector | llm prefill | llm decode | "
               "identical to the loop |")


def _rows(markdown: str) -> dict[str, list[str]]:
    """The table's rows by their first cell."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_synthetic_benchmark_has_the_real_schema_and_playable_videos(tmp_path: Path) -> None:
    data = write_synthetic_benchmark(tmp_path, videos=2, questions=14, shape=VideoShape(64, 48, 1.0, 10, 5))
    folder = tmp_path / "MSVD_Zero_Shot_QA"
    questions = json.loads((folder / "test_q_1k.json").read_text())
    answers = json.loads((folder / "test_a_1k.json").read_text())
    assert len(questions) == len(answers) == len(data.loaded.items) == 28
    assert set(questions[0]) == {"video_name", "question", "question_id"} and set(answers[0]) >= {"answer", "question_id"}
    assert [q["video_name"] for q in questions] == ["synthetic000"] * 14 + ["synthetic001"] * 14  # grouped, as MSVD
    assert len({q["question"] for q in questions[:14]}) == 14  # distinct within a video, even past the templates
    assert len({len(q["question"]) for q in questions}) > 3  # prompts of different lengths
    for video in ("synthetic000", "synthetic001"):
        with av.open(str(folder / "videos" / f"{video}.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.width, stream.height) == (64, 48)
            assert sum(1 for _ in container.decode(stream)) == 10
    assert "2 videos x 14 questions = 28 items" in data.describe() and "64x48, 1 s at 10 fps" in data.describe()


@pytest.mark.parametrize(("shape", "words"), [(VideoShape(63, 48), "even"), (VideoShape(64, 48, 0.5, 10), "8 frames")])
def test_bad_video_shapes_are_refused(tmp_path: Path, shape: VideoShape, words: str) -> None:
    from fastervlm.errors import FasterVLMError

    with pytest.raises(FasterVLMError, match=words):
        write_synthetic_benchmark(tmp_path, videos=1, questions=1, shape=shape)


def test_eval_mode_prints_loop_and_harness_with_identical_predictions(tmp_path, tiny_checkpoint, capsys) -> None:
    code = main(["bench", "--eval", "--model", str(tiny_checkpoint), "--videos", "2", "--questions", "3", *SMALL,
                 "--batch-size", "2", "--out", str(tmp_path), "--markdown"])
    captured = capsys.readouterr()
    assert code == 0
    assert EVAL_HEADER in captured.out
    rows = _rows(captured.out)
    loop, ours = rows["per-item loop"], rows["harness"]
    assert loop[1] == ours[1] == "6" and loop[4] == "x1.00" and loop[-1] == "-"
    assert ours[-1] == "yes (6/6)"
    assert int(loop[5]) == 6  # the loop runs the tower once per question
    assert int(ours[5]) == 2  # the harness runs it once per video
    assert "synthetic MSVD-QA-like benchmark: 2 videos x 3 questions = 6 items" in captured.out
    assert "predictions identical" in captured.err
    saved = json.loads((tmp_path / "bench-eval.json").read_text())
    assert saved["all_identical"] is True and saved["configurations"] == ["fastervlm reduction=0.9"]
    assert [row["name"] for row in saved["rows"]] == ["per-item loop", "harness"]
    for row in saved["rows"]:
        assert {"vision_encoder", "llm_prefill", "decode_video"} <= set(row["stage_seconds"])
        assert row["items_per_second"] == pytest.approx(row["items"] / row["seconds"])


def test_eval_sweep_counts_the_tower_runs_of_every_budget(tmp_path, tiny_checkpoint, capsys) -> None:
    code = main(["bench", "--eval", "--model", str(tiny_checkpoint), "--videos", "1", "--questions", "2",
                 "--reductions", "0.5", "0.75", "0.9", *SMALL, "--out", str(tmp_path), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    loop, sweep = result["rows"]
    assert sweep["name"] == "harness (sweep of 3)" and loop["items"] == sweep["items"] == 6
    assert loop["video_encodings"] == 6  # 3 budgets x 2 questions, one tower run each
    assert sweep["video_encodings"] == 1  # once for the video, shared by the 3 budgets
    assert sweep["identical"] == 6 and result["all_identical"] is True


def test_a_differing_prediction_is_reported(tiny_pipeline) -> None:
    loop = harness.EvalRunRow(harness.LOOP, 2, 1.0, 2, {}, "answers")
    ours = harness.EvalRunRow(harness.HARNESS, 2, 0.5, 1, {}, "harness summary")
    answers = {("c", "a"): harness._Prediction("yes", [1, 2]), ("c", "b"): harness._Prediction("no", [3])}
    predictions = {("c", "a"): harness._Prediction("yes", [1, 2]), ("c", "b"): harness._Prediction("no", [4])}
    harness._compare(ours, answers, predictions)
    assert ours.identical == 1
    result = harness.EvalBenchResult("m", "cpu", "float32", 1, "t", "d", ["c"], 3, [loop, ours])
    assert result.all_identical is False
    predictions[("c", "b")] = harness._Prediction("no", None)  # records without output ids: the text decides
    harness._compare(ours, answers, predictions)
    assert ours.identical == 2


def test_rounds_alternate_and_the_speedup_is_the_median_of_each_rounds_ratio(monkeypatch, tiny_checkpoint) -> None:
    """Round 1 loop first, round 2 harness first, ...; a load that slows one whole round cannot make the ratio."""
    order: list[str] = []
    loop_seconds, harness_seconds = iter([4.0, 8.0, 4.0]), iter([1.0, 8.0, 2.0])  # round 2 ran under load

    def loop(*args, **kwargs):
        order.append("loop")
        return harness.EvalRunRow(harness.LOOP, 4, next(loop_seconds), 4, {}, "answers"), {}

    def harnessed(*args, **kwargs):
        order.append("harness")
        return harness.EvalRunRow(harness.HARNESS, 4, next(harness_seconds), 1, {}, "harness summary"), {}

    monkeypatch.setattr(harness, "_per_item_loop", loop)
    monkeypatch.setattr(harness, "_harness", harnessed)
    monkeypatch.setattr(harness, "_warm_up", lambda *args: None)
    from fastervlm.bench.configs import BenchConfig, ModelSource

    result = harness.run_eval_benchmark(ModelSource(checkpoint=str(tiny_checkpoint), device="cpu"), [BenchConfig("fastervlm", {})],
                                        videos=1, questions=1, shape=VideoShape(64, 48, 1.0, 10), rounds=3,
                                        progress=False)
    assert order == ["loop", "harness", "harness", "loop", "loop", "harness"]
    loop_row, ours = result.rows
    assert ours.speedup == pytest.approx(2.0) and ours.speedup_range == pytest.approx((1.0, 4.0))  # ratios 4, 1, 2
    assert loop_row.round_seconds == [4.0, 8.0, 4.0] and ours.round_seconds == [1.0, 8.0, 2.0]
    assert ours.seconds == 2.0 and len(result.round_loads) == 3


def test_video_encodings_count_samples_and_the_hook_goes_away(tiny_pipeline) -> None:
    size = tiny_pipeline.adapter.tower.config.image_size
    frames = [tiny_pipeline.frames(pixels=torch.rand(tiny_pipeline.num_frames, 3, size, size)) for _ in range(3)]
    pruner = tiny_pipeline.pruner("fastervlm", keep=2)
    from fastervlm.models.base import GenerationSettings

    with harness.count_video_encodings(tiny_pipeline) as count:
        tiny_pipeline.run(frames, ["what?"] * 3, pruner, GenerationSettings(max_new_tokens=1))
        tiny_pipeline.run(frames[:1], ["what?"], pruner, GenerationSettings(max_new_tokens=1))
    assert count[0] == 4
    assert "encode" not in vars(tiny_pipeline.adapter.stream)


@pytest.mark.parametrize(("argv", "message"), [
    (["--videos", "3"], "--videos applies to --eval only"),
    (["--eval", "--video", "x.mp4"], "--video applies to the methods x budgets mode"),
    (["--eval", "--in-process"], "--in-process applies to"),
    (["--decode", "--methods", "fastv"], "--methods applies to the methods x budgets mode"),
    (["--gops", "5"], "--gops applies to --decode only"),
    (["--eval", "--size", "64by48"], "WIDTHxHEIGHT"),
    (["--eval", "--questions", "0"], "--videos and --questions must be at least 1"),
    (["--eval", "--decode"], "not allowed with argument"),
])
def test_mode_flags_are_checked(tmp_path, capsys, argv, message) -> None:
    both_modes = "--decode" in argv and "--eval" in argv  # argparse's own refusal: SystemExit(2)
    with pytest.raises(SystemExit) if both_modes else nullcontext():
        assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_decode_mode_prints_the_decode_table(tmp_path, capsys) -> None:
    code = main(["bench", "--decode", "--size", "64x48", "--duration", "2", "--fps", "10", "--gops", "5",
                 "--containers", "mp4", "--repeats", "1", "--video-dir", str(tmp_path / "videos"), "--out",
                 str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].startswith("| container | GOP | frames | MiB | pyav ms | pyav-scan ms |")
    assert "| mp4 | 5 | 20 |" in out
    (row,) = json.loads((tmp_path / "bench-decode.json").read_text())
    assert row["identical"] is True and row["frames"] == 20


def test_a_bad_benchmark_size_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch) -> None:
    from fastervlm.bench import ModelSource

    def no_build(self):  # noqa: ANN001, ANN202
        raise AssertionError("the model was built")

    monkeypatch.setattr(ModelSource, "build", no_build)
    assert main(["bench", "--eval", "--videos", "0", "--out", str(tmp_path)]) == 2
    assert "--videos and --questions must be at least 1 (got 0 and 8)" in capsys.readouterr().err
    assert main(["bench", "--eval", "--duration", "0.1", "--out", str(tmp_path)]) == 2
    assert "gives 3 frames" in capsys.readouterr().err
