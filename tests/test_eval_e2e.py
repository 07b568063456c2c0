"""End to end on the tiny checkpoint: synthetic videos named after the items of generated benchmark files (the
real schema, tests/eval_helpers.SAMPLE_ITEMS), predict -> judge (scripted local server) -> report through the
CLI, a sweep that resumes everything, and torchrun with 2 CPU processes against 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import SAMPLE_ITEMS, write_sample_benchmarks
from fake_openai_server import FakeOpenAI, Reply

from fastervlm.cli import main
from fastervlm.eval.benchmarks import BENCHMARKS
from fastervlm.eval.rundir import RunDir, find_runs
from fastervlm.tiny.identity import model_name

LIMIT = 3
MISSING = SAMPLE_ITEMS["tgif"][2][0]  # TGIF's 3rd item: its video is left out on purpose
COMMON = ["--limit", str(LIMIT), "--device", "cpu", "--max-new-tokens", "4", "--no-progress"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated question/answer files plus synthetic videos for their first items."""
    from fastervlm.tiny.video import write_synthetic_video

    root = tmp_path_factory.mktemp("data")
    questions_by_benchmark = write_sample_benchmarks(root)
    for seed, bench in enumerate(BENCHMARKS.values()):
        questions = questions_by_benchmark[bench.name][:LIMIT]
        videos = bench.videos(root)
        videos.mkdir(parents=True)
        extension = ".mkv" if bench.name == "activitynet" else ".mp4"
        for n, video in enumerate(dict.fromkeys(q["video_name"] for q in questions)):
            if video != MISSING:
                write_synthetic_video(videos / f"{bench.video_stem(video)}{extension}", num_frames=10, height=32,
                                      width=48, seed=10 * seed + n)
    return root


def _first_questions(data_root: Path) -> list[str]:
    return [json.loads((data_root / b.folder / "test_q_1k.json").read_text())[0]["question"] for b in BENCHMARKS.values()]


def _judge_env(monkeypatch: pytest.MonkeyPatch, server: FakeOpenAI) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")


def test_predict_judge_report(data_root: Path, tiny_checkpoint: Path, tiny_pipeline, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    base = ["eval", "predict", "--data-root", str(data_root), "--model", str(tiny_checkpoint), "--out", str(runs), *COMMON]
    for name in BENCHMARKS:
        base += ["--benchmarks", name]
    assert main(base) == 0
    assert main([*base, "--reduction", "0.9"]) == 0
    found = find_runs(runs)
    assert sorted(r.path.relative_to(runs).as_posix() for r in found) == sorted(
        f"{model_name(tiny_checkpoint)}/{b}/{m}" for b in BENCHMARKS for m in ("none", "fastervlm_r0.9"))
    tgif = RunDir(runs / model_name(tiny_checkpoint) / "tgif" / "fastervlm_r0.9").predictions()
    assert [("error" in r) for r in tgif.values()] == [False, False, True]
    n, frames = tiny_pipeline.num_patches, tiny_pipeline.num_frames
    assert {r["visual_tokens"] for r in tgif.values() if "error" not in r} == {frames * round(n * 0.1)}

    # The judge says yes to each benchmark's first question, no to the rest.
    yes = {q: [Reply("{'pred': 'yes', 'score': 4}")] * 2 for q in _first_questions(data_root)}
    with FakeOpenAI(yes) as server:
        _judge_env(monkeypatch, server)
        cache = ["--judge-cache", str(tmp_path / "cache")]
        assert main(["eval", "judge", str(runs), *cache, "--no-progress"]) == 0
        calls = len(server.calls)
        assert calls == 2 * (4 * LIMIT - 1)  # two runs, every item except the missing video
        assert main(["eval", "judge", str(runs), *cache, "--no-progress"]) == 0
        assert len(server.calls) == calls  # all cached
        capsys.readouterr()
        assert main(["eval", "report", str(runs), "--out", str(tmp_path / "report")]) == 0
        table = capsys.readouterr().out
        tokens_full, tokens_pruned = frames * n, frames * round(n * 0.1)
        # every benchmark: 1 yes of 3 (TGIF: of 2 predicted, its missing video is flagged)
        assert f"| none | {tokens_full} | 50.0† | 2.50† | 33.3 | 2.00 | 33.3 | 2.00 | 33.3 | 2.00 | 100.00% | 100.00% |" in table
        assert f"| fastervlm_r0.9 | {tokens_pruned} | 50.0† |" in table
        assert "tgif / none: 1 prediction errors" in table
        assert (tmp_path / "report" / "report.png").is_file()
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        assert {r["benchmark"]: r["errors"] for r in report["runs"] if r["row"] == "none"} == {
            "tgif": 1, "msvd": 0, "msrvtt": 0, "activitynet": 0}

        # A sweep over the same grid with the same judge finds every run finished and every judgment cached.
        sweep = ["eval", "sweep", "--data-root", str(data_root), "--model", str(tiny_checkpoint), "--out", str(runs),
                 "--reductions", "0.9", "--judge-cache", str(tmp_path / "cache"), *COMMON]
        assert main(sweep) == 0
        assert len(server.calls) == calls
    err = capsys.readouterr().err
    assert "0 answered" in err and "3 already done" in err
    assert (runs / "report.md").is_file()


def test_a_different_configuration_is_refused_by_the_cli(data_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    run = ["eval", "predict", "--benchmarks", "msvd", "--data-root", str(data_root), "--model", str(tiny_checkpoint),
           "--run-dir", str(tmp_path / "run"), *COMMON]
    assert main([*run, "--reduction", "0.5"]) == 0
    assert main([*run, "--reduction", "0.75"]) == 2
    assert "method.reduction: 0.5 in the run directory, 0.75 now" in capsys.readouterr().err


def test_a_larger_limit_grows_the_run_through_the_cli(data_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = ["eval", "predict", "--benchmarks", "msrvtt", "--data-root", str(data_root), "--model", str(tiny_checkpoint),
           "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--max-new-tokens", "4", "--no-progress"]
    assert main([*run, "--limit", "2"]) == 0
    first = RunDir(tmp_path / "run").predictions()
    assert main([*run, "--limit", "3"]) == 0
    assert "1 answered, 0 errors, 2 already done (of 3 in this shard)" in capsys.readouterr().err
    grown = RunDir(tmp_path / "run").predictions()
    assert list(grown) == [q["question_id"] for q in json.loads((data_root / "MSRVTT_Zero_Shot_QA" / "test_q_1k.json").read_text())[:3]]
    assert {i: grown[i] for i in first} == first  # what was predicted stays as it was
    assert main([*run, "--limit", "1"]) == 2
    assert "holds a run of 3 items and this command asks for its first 1: a run is never shrunk" in capsys.readouterr().err


def test_a_budget_out_of_range_stops_predict_instead_of_an_error_per_item(data_root: Path, tiny_checkpoint: Path,
                                                                          tiny_pipeline, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    too_many = tiny_pipeline.num_patches + 1
    assert main(["eval", "predict", "--benchmarks", "msvd", "--data-root", str(data_root), "--model", str(tiny_checkpoint),
                 "--run-dir", str(tmp_path / "run"), "--keep", str(too_many), *COMMON]) == 2
    assert f"--keep must be a whole number of patches per frame between 0 and {tiny_pipeline.num_patches}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_judge_without_a_server_fails_loudly(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    from eval_helpers import make_run

    make_run(tmp_path / "runs" / "run", {"q0": ("a", "b"), "q1": ("c", "d")})
    server = FakeOpenAI().start()
    _judge_env(monkeypatch, server)
    server.stop()
    assert main(["eval", "judge", str(tmp_path / "runs"), "--judge-cache", str(tmp_path / "c"), "--no-progress",
                 "--max-attempts", "1"]) == 2
    assert "looks down" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["eval", "judge", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun is not installed")
def test_torchrun_two_processes_equal_one(data_root: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Two ranks shard by video (MSVD's first video has two questions: both on one rank), batched."""
    import torch

    args = ["eval", "predict", "--benchmarks", "activitynet", "msvd", "--data-root", str(data_root),
            "--model", str(tiny_checkpoint), "--reduction", "0.75", "--batch-size", "2", *COMMON]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): identical float sums
    try:
        assert main([*args, "--out", str(tmp_path / "one"), "--batch-size", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "fastervlm", *args,
                           "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    def strip(run: RunDir) -> dict:
        return {i: {k: v for k, v in r.items() if k not in ("rank", "timings")} for i, r in run.predictions().items()}

    for benchmark in ("activitynet", "msvd"):
        one = RunDir(tmp_path / "one" / model_name(tiny_checkpoint) / benchmark / "fastervlm_r0.75")
        two = RunDir(tmp_path / "two" / model_name(tiny_checkpoint) / benchmark / "fastervlm_r0.75")
        assert [p.name for p in two.prediction_files()] == ["rank-00000.jsonl", "rank-00001.jsonl"]
        assert {r["rank"] for r in two.predictions().values()} == {0, 1}
        lines = [line for path in two.prediction_files() for line in path.read_text().splitlines()]
        assert len(lines) == LIMIT  # disjoint shards: every item answered once
        assert strip(two) == strip(one)  # batched on two ranks = one item at a time in one process
        assert len(strip(one)) == LIMIT and all("error" not in r for r in strip(one).values())
        ranks: dict[str, set[int]] = {}
        for record in two.predictions().values():
            ranks.setdefault(record["video"], set()).add(record["rank"])
        assert all(len(found) == 1 for found in ranks.values())  # every video's questions on one rank
    msvd = RunDir(tmp_path / "two" / model_name(tiny_checkpoint) / "msvd" / "fastervlm_r0.75").predictions()
    assert len({r["video"] for r in msvd.values()}) == 2  # two videos, one of them with two questions


def test_the_frame_cache_flags(data_root: Path, tiny_checkpoint: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--frame-cache on fills the cache folder (a second run reads it: same records); off leaves it alone."""
    cache = tmp_path / "frames"
    monkeypatch.setenv("FASTERVLM_FRAME_CACHE", str(cache))
    run = ["eval", "predict", "--benchmarks", "msrvtt", "--data-root", str(data_root), "--model", str(tiny_checkpoint),
           *COMMON]
    assert main([*run, "--run-dir", str(tmp_path / "off"), "--frame-cache", "off"]) == 0
    assert not cache.exists()
    assert main([*run, "--run-dir", str(tmp_path / "first")]) == 0
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 2  # msrvtt's first 3 items ask about 2 videos
    stamps = [entry.stat().st_mtime_ns for entry in entries]
    assert main([*run, "--run-dir", str(tmp_path / "again"), "--frame-cache-size", "1"]) == 0
    assert sorted(cache.glob("*.npz")) == entries and [e.stat().st_mtime_ns for e in entries] != stamps  # hits

    def records(name: str) -> dict:
        return {i: {k: v for k, v in r.items() if k != "timings"} for i, r in RunDir(tmp_path / name).predictions().items()}

    assert records("off") == records("first") == records("again")
    assert main([*run, "--run-dir", str(tmp_path / "bad"), "--batch-size", "0"]) == 2
    assert "--batch-size is a number of questions per generate call: 1 or more (got 0)" in capsys.readouterr().err
