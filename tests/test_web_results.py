"""The results tab's data: a runs folder made with the eval library (two configurations, judged by the local fake
judge) shown as `eval report`'s table and plot, and a per-item browser whose disagreement filter is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import make_run
from fake_openai_server import FakeOpenAI

from fastervlm.errors import FasterVLMError

JUDGE = "fake-judge"
ANSWERS = {"q1": "cat", "q2": "dog", "q3": "red", "q4": "run", "q5": "sun"}
PREDICTIONS = {
    # the fake judge says yes when the reference answer is in the prediction
    "none": {"q1": "a cat", "q2": "a cow", "q3": "red", "q4": None, "q5": "moon"},
    "fastervlm_r0.9": {"q1": "the cat", "q2": "a dog", "q3": "blue", "q4": "run", "q5": "stars"},
}
DISAGREE = ["q2", "q3", "q4"]
"""q2 and q3 get opposite verdicts, q4 is an error against an answer; q1 (yes, yes) and q5 (no, no) agree."""


def make_runs(root: Path) -> Path:
    """<root>/runs/tiny/msvd/{none,fastervlm_r0.9}: predictions written by the eval run directory code, judged by
    `judge_runs` against the local fake judge."""
    from fastervlm.eval.judge import JudgeSettings, judge_runs
    from fastervlm.eval.rundir import find_runs

    runs = root / "runs"
    methods = {"none": None, "fastervlm_r0.9": {"method": "fastervlm", "keep": None, "reduction": 0.9}}
    for name, predictions in PREDICTIONS.items():
        answers = {i: (ANSWERS[i], predictions[i]) for i in ANSWERS}
        make_run(runs / "tiny" / "msvd" / name, answers, method=methods[name], tokens=2048 if methods[name] is None else 208)
    with FakeOpenAI() as judge:
        settings = JudgeSettings(model=JUDGE, base_url=judge.url, cache_dir=root / "judge-cache", backoff=0.01)
        judge_runs(find_runs(runs), settings, api_key="sk-local-test", progress=False, report=lambda line: None)
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("web-results"))


def test_report_and_plot_are_eval_reports(runs: Path, tmp_path: Path) -> None:
    from PIL import Image

    from fastervlm.eval.report import build_report
    from fastervlm.web.results import load_results

    view = load_results(runs, tmp_path)
    assert view.markdown() == build_report([runs]).markdown()
    assert "| tiny | none |" in view.markdown() and "| tiny | fastervlm_r0.9 |" in view.markdown()
    with Image.open(view.plot) as plot:
        assert plot.format == "PNG" and plot.width > 100


def test_item_browser_lines_up_predictions_and_verdicts(runs: Path, tmp_path: Path) -> None:
    from fastervlm.web.results import ITEM_COLUMNS, load_results

    view = load_results(runs, tmp_path)
    assert list(view.groups) == ["tiny / MSVD"]
    group = view.groups["tiny / MSVD"]
    assert group.configurations == ["none", "fastervlm_r0.9"], "the baseline comes first, as in the table"
    assert group.columns() == [*ITEM_COLUMNS, "none answer", "none verdict", "fastervlm_r0.9 answer", "fastervlm_r0.9 verdict"]
    rows = {row[0]: row for row in group.rows()}
    assert list(rows) == list(ANSWERS)
    for item, row in rows.items():
        assert row[3] == ANSWERS[item]
        for n, name in enumerate(group.configurations):
            pred, verdict = row[4 + 2 * n], row[5 + 2 * n]
            expected = PREDICTIONS[name][item]
            if expected is None:
                assert (pred, verdict) == ("", "error: no video")
            else:
                assert pred == expected
                assert verdict == ("yes · 5" if ANSWERS[item] in expected else "no · 1")


def test_disagreement_filter_keeps_exactly_the_items_that_differ(runs: Path, tmp_path: Path) -> None:
    from fastervlm.web.results import load_results

    group = load_results(runs, tmp_path).groups["tiny / MSVD"]
    assert [row[0] for row in group.rows(only_disagreements=True)] == DISAGREE
    assert [i for i in ANSWERS if group.disagree(i)] == DISAGREE


def test_unjudged_runs_compare_answers(tmp_path: Path) -> None:
    from fastervlm.web.results import load_results

    runs = tmp_path / "runs"
    make_run(runs / "m" / "msvd" / "none", {"a": ("x", "Same  answer"), "b": ("y", "one")})
    make_run(runs / "m" / "msvd" / "fastervlm_r0.9", {"a": ("x", "same answer"), "b": ("y", "two")},
             method={"method": "fastervlm", "keep": None, "reduction": 0.9})
    group = load_results(runs, tmp_path).groups["tiny / MSVD"]
    assert [row[0] for row in group.rows(only_disagreements=True)] == ["b"]
    assert {row[5] for row in group.rows()} == {"not judged"}


def test_bad_runs_folder_is_a_clear_error(tmp_path: Path) -> None:
    from fastervlm.web.results import load_results

    for folder, words in [("", "give the folder"), (tmp_path / "nowhere", "is not a folder"), (tmp_path, "no run directories")]:
        with pytest.raises(FasterVLMError, match=words):
            load_results(folder, tmp_path)
