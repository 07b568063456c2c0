"""Run directories: configuration refusal, crash-safe appends, resume set and merge of per-rank files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastervlm.errors import FasterVLMError
from fastervlm.eval.rundir import JsonlAppender, RunDir, config_differences, find_runs, read_jsonl

ITEMS = [{"id": f"q{i}", "video_name": "v", "question": "?", "answer": "a"} for i in range(4)]


def _config(**method) -> dict:
    return {"benchmark": {"name": "msvd", "items": 4}, "method": {"method": "fastervlm", "reduction": 0.9, **method},
            "provenance": {"created": "now", "model_path": "/a"}}


def test_a_different_configuration_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.create_or_check(_config(), ITEMS) is True
    other_provenance = {**_config(), "provenance": {"created": "later", "model_path": "/elsewhere"}}
    assert run.create_or_check(other_provenance, ITEMS) is False  # provenance is not compared
    with pytest.raises(FasterVLMError, match=r"(?s)method.reduction: 0.9 in the run directory, 0.95 now.*--tag"):
        run.create_or_check(_config(reduction=0.95), ITEMS)
    assert run.config()["method"]["reduction"] == 0.9


def test_config_differences_lists_nested_keys() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "provenance": {"x": 1}}
    new = {"a": 1, "b": {"c": 2, "d": 4, "e": 5}, "provenance": {"x": 2}}
    assert config_differences(old, new) == ["b.d: 3 in the run directory, 4 now", "b.e: None in the run directory, 5 now"]


def test_torn_last_line_is_skipped_then_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": "q0"})
    with open(path, "a") as f:
        f.write('{"id": "q1", "pr')  # a writer killed mid-line
    assert [r["id"] for r in read_jsonl(path)] == ["q0"]
    with JsonlAppender(path) as out:
        out.write({"id": "q2"})
    assert path.read_text() == '{"id": "q0"}\n{"id": "q2"}\n'


def test_a_damaged_line_names_the_file_the_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "q0"}\n{"id": q1}\n{"id": "q2"}\n')
    with pytest.raises(FasterVLMError, match=r"p\.jsonl line 2 is not JSON.*Repair or delete that line"):
        list(read_jsonl(path))


@pytest.mark.parametrize("line", ["[1]", '"q1"', '{"pred": "yes"}'])
def test_a_line_that_is_not_a_record_is_named_too(tmp_path: Path, line: str) -> None:
    """JSON, but not an object with an id: it used to stop `eval report` with a TypeError or KeyError traceback."""
    path = tmp_path / "p.jsonl"
    path.write_text(f'{{"id": "q0"}}\n{line}\n')
    with pytest.raises(FasterVLMError, match=r"p\.jsonl line 2 is not a JSON object with an id.*Repair or delete"):
        list(read_jsonl(path))


def test_a_damaged_judge_json_is_named_with_the_fix(tmp_path: Path, capsys) -> None:
    from eval_helpers import make_run

    from fastervlm.cli import main

    run = make_run(tmp_path / "runs" / "tiny" / "msvd" / "none", {"q0": ("a", "a")})
    settings = run.judge_dir("gpt-3.5-turbo") / "judge.json"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"judge_model": ')
    assert main(["eval", "report", str(tmp_path / "runs"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"{settings} is damaged (JSONDecodeError" in err and "run `fastervlm eval judge`" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_two_writers_on_one_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with JsonlAppender(path):
        with pytest.raises(FasterVLMError, match="being written by another process"):
            JsonlAppender(path)
    JsonlAppender(path).close()  # released on close


def test_merge_prefers_success_and_later_records_and_keeps_item_order(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create_or_check(_config(), ITEMS)
    with JsonlAppender(run.prediction_file(1)) as out:
        out.write({"id": "q3", "pred": "x"})
        out.write({"id": "q1", "pred": None, "error": "no video"})
    with JsonlAppender(run.prediction_file(0)) as out:
        out.write({"id": "q2", "pred": None, "error": "broken"})
        out.write({"id": "q0", "pred": "first"})
    with JsonlAppender(run.prediction_file(0)) as out:  # a resumed run retried q1 and q2
        out.write({"id": "q1", "pred": "found it"})
        out.write({"id": "q2", "pred": None, "error": "still broken"})
    merged = run.predictions()
    assert list(merged) == ["q0", "q1", "q2", "q3"]
    assert merged["q1"]["pred"] == "found it"
    assert merged["q2"]["error"] == "still broken"
    assert run.finished_ids() == {"q0", "q1", "q3"}


def test_find_runs_walks_a_tree(tmp_path: Path) -> None:
    for name in ("m/msvd/none", "m/msvd/fastervlm_r0.9", "m/tgif/none"):
        RunDir(tmp_path / name).create_or_check(_config(), ITEMS)
    (tmp_path / "m" / "stray").mkdir()
    (tmp_path / "m" / "stray" / "config.json").write_text(json.dumps({}))  # not a run: no items.json
    found = sorted(str(r.path.relative_to(tmp_path)) for r in find_runs(tmp_path))
    assert found == ["m/msvd/fastervlm_r0.9", "m/msvd/none", "m/tgif/none"]
    assert [r.path for r in find_runs(tmp_path / "m/tgif/none")] == [tmp_path / "m/tgif/none"]
    with pytest.raises(FasterVLMError, match="not a run directory"):
        RunDir(tmp_path / "m").config()


@pytest.mark.parametrize("damage", ["config.json", "items.json"])
def test_a_damaged_run_record_gets_a_clear_error(tmp_path: Path, damage: str) -> None:
    run = RunDir(tmp_path / "run")
    run.create_or_check(_config(), ITEMS)
    (run.path / damage).write_text('{"benchmark": ')
    with pytest.raises(FasterVLMError, match=rf"{damage} is missing or damaged .*start a fresh run"):
        run.config() if damage == "config.json" else run.items()
