"""The sweep as a library function (predict every cell -> judge -> report, with its failure policy) and its
command line: space-separated lists (commas accepted), [METHOD:]KEY=VALUE settings, errors that name `eval sweep`."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import FakeGeneration, FakePipeline, write_benchmark
from fake_openai_server import FakeOpenAI

from fastervlm.cli import build_parser, main
from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.judge import JudgeSettings, JudgeUnavailable
from fastervlm.eval.sweep import Cell, Sweep, grid, run_sweep

IDS = ["q0", "q1", "q2"]


def test_the_grid_asks_the_registry_which_cells_keep_everything() -> None:
    from fastervlm.methods import baseline_method

    cells = grid(["fastv", "none", "fastervlm"], [0.9, 0.0, 0.5], {"seed": 1}, scoped={"fastv": {"layer": 3}})
    assert cells[0] == Cell(baseline_method(), {})
    assert [(c.method, c.settings) for c in cells[1:]] == [
        ("fastv", {"reduction": 0.5, "seed": 1, "layer": 3}), ("fastervlm", {"reduction": 0.5, "seed": 1}),
        ("fastv", {"reduction": 0.9, "seed": 1, "layer": 3}), ("fastervlm", {"reduction": 0.9, "seed": 1}),
    ]  # reduction 0 and the baseline method are the baseline row, not repeated
    assert grid(["fastervlm"], [0.9], baseline=False) == [Cell("fastervlm", {"reduction": 0.9})]


def _sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "sweep", "--data-root", str(tmp_path / "data"), "--model", str(tmp_path / "no-such-model"),
            "--out", str(tmp_path / "runs"), "--no-judge", "--no-progress", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--reductions", "0.5", "x"], "eval sweep: --reductions: '0.5 x' is not a list of float values"),
    (["--reductions", "1.5"], "eval sweep: --reductions must be between 0 and 1 (got 1.5)"),
    (["--methods", "fastervlm", "nope"], "eval sweep: unknown method 'nope'"),
    (["--method-option", "fastv:layer=3"], "eval sweep: --method-option fastv:layer=3 is for fastv, which is not in --methods (fastervlm)"),
    (["--methods", "fastv,fastervlm", "--method-option", "layer=3"], "eval sweep: method 'fastervlm' has no setting layer"),
    (["--method-option", "layer"], "eval sweep: --method-option 'layer' is not KEY=VALUE (or METHOD:KEY=VALUE)"),
    (["--benchmarks", "msvd", "nope"], "eval sweep: unknown benchmark 'nope'"),
])
def test_sweep_errors_name_the_subcommand_before_the_model_loads(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    write_benchmark(tmp_path / "data", IDS)
    assert main(_sweep_args(tmp_path, "--benchmarks", "msvd", *extra) if "--benchmarks" not in extra
                else _sweep_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastervlm: error: {message}"), err
    assert "no-such-model" not in err  # nothing got as far as loading


def test_list_flags_take_spaces_commas_and_repetition() -> None:
    parser = build_parser()
    sweep = parser.parse_args(["eval", "sweep", "--data-root", "d", "--model", "m", "--out", "o",
                               "--benchmarks", "msvd", "tgif,msrvtt", "--methods", "fastv", "fastervlm",
                               "--reductions", "0.5,0.75", "0.9", "--method-option", "fastv:layer=3"])
    from fastervlm.cli.common import split_list

    assert split_list(sweep.benchmarks) == ["msvd", "tgif", "msrvtt"]
    assert split_list(sweep.methods) == ["fastv", "fastervlm"]
    assert split_list(sweep.reductions, float) == [0.5, 0.75, 0.9]
    default = parser.parse_args(["eval", "sweep", "--data-root", "d", "--model", "m", "--out", "o"])
    assert split_list(default.benchmarks) == list(BENCHMARKS) and default.methods is None
    predict = parser.parse_args(["eval", "predict", "--data-root", "d", "--model", "m", "--out", "o",
                                 "--benchmarks", "msvd", "tgif", "--benchmarks", "activitynet,msrvtt"])
    assert split_list(predict.benchmarks) == ["msvd", "tgif", "activitynet", "msrvtt"]


def test_compare_arguments_have_help(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "RUN_A a run folder (e.g. the unpruned baseline): the reference" in text
    assert "RUN_B a run folder of the same benchmark; differences are B - A" in text


def _plan(tmp_path: Path, judge: JudgeSettings | None) -> Sweep:
    write_benchmark(tmp_path / "data", IDS)
    loaded = [load_items(BENCHMARKS["msvd"], tmp_path / "data")]
    return Sweep(benchmarks=loaded, data_root=tmp_path / "data", cells=grid(["fastervlm"], [0.5]),
                 generation=FakeGeneration(), out=tmp_path / "runs", judge=judge, plot=False, api_key="k")


def test_run_sweep_predicts_every_cell_judges_and_reports(tmp_path: Path) -> None:
    shown, said = [], []
    with FakeOpenAI() as server:
        plan = _plan(tmp_path, JudgeSettings(base_url=server.url, cache_dir=tmp_path / "cache"))
        runs = run_sweep(plan, lambda device: FakePipeline(tmp_path), progress=False, say=said.append, show=shown.append)
        assert len(server.calls) == len(IDS)  # the fake model answers both cells alike: judged once, cached
    assert [r.path.name for r in runs] == ["none", "fastervlm_r0.5"]
    assert "| fake-model | none |" in shown[0] and (tmp_path / "runs" / "report.md").is_file()
    assert any(line.startswith("wrote ") for line in said)


def test_a_judge_failure_still_writes_the_report_then_is_raised(tmp_path: Path) -> None:
    server = FakeOpenAI().start()
    url = server.url
    server.stop()  # nothing listens there: the judge fails
    dead = JudgeSettings(base_url=url, cache_dir=tmp_path / "cache", backoff=0.001, max_backoff=0.01, max_attempts=1)
    shown: list[str] = []
    with pytest.raises(JudgeUnavailable):
        run_sweep(_plan(tmp_path, dead), lambda device: FakePipeline(tmp_path), progress=False, say=lambda _: None,
                  show=shown.append)
    assert shown and (tmp_path / "runs" / "report.md").is_file()
    assert "not judged" in (tmp_path / "runs" / "report.md").read_text()


def test_a_missing_judge_key_fails_before_any_prediction(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = _plan(tmp_path, JudgeSettings(cache_dir=tmp_path / "cache"))
    plan.api_key = None
    loaded: list[str] = []
    with pytest.raises(FasterVLMError, match="OPENAI_API_KEY"):
        run_sweep(plan, lambda device: loaded.append(device) or FakePipeline(tmp_path), progress=False)
    assert loaded == [] and not (tmp_path / "runs").exists()


def test_a_budget_the_model_cannot_keep_fails_before_any_run_is_made(tmp_path: Path) -> None:
    from fastervlm.errors import BudgetError
    from fastervlm.eval.sweep import sweep_predict

    write_benchmark(tmp_path / "data", IDS)
    loaded = [load_items(BENCHMARKS["msvd"], tmp_path / "data")]
    pipe = FakePipeline(tmp_path)  # 16 patches per frame
    with pytest.raises(BudgetError, match="between 0 and 16"):
        sweep_predict(pipe, loaded, tmp_path / "data", [Cell("fastervlm", {"keep": 17})], FakeGeneration(),
                      out=tmp_path / "runs", progress=False)
    assert pipe.answered == [] and not (tmp_path / "runs").exists()
