"""Benchmarks as data: the four definitions, question/answer matching by id, --limit, user-defined files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import BENCHMARKS, get_benchmark, load_items, video_path


def _write_pair(root: Path, folder: str, questions: list[dict], answers: list[dict], suffix: str = "_1k") -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / f"test_q{suffix}.json").write_text(json.dumps(questions))
    (d / f"test_a{suffix}.json").write_text(json.dumps(answers))
    return d


def _qa(n: int, offset: int = 0) -> tuple[list[dict], list[dict]]:
    qs = [{"video_name": f"vid{i}", "question": f"what {i}?", "question_id": f"v_vid{i}_0"} for i in range(offset, offset + n)]
    ans = [{"answer": f"ans{i}", "type": 3, "question_id": f"v_vid{i}_0"} for i in range(offset, offset + n)]
    return qs, ans


def test_cli_names_match_the_benchmark_table() -> None:
    from fastervlm.cli.eval import BENCHMARK_NAMES

    assert tuple(BENCHMARKS) == BENCHMARK_NAMES


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_shared_1k_files_load_and_match(name: str, shared_benchmarks: Path) -> None:
    loaded = load_items(BENCHMARKS[name], shared_benchmarks)
    assert len(loaded.items) == 1000
    assert len({i.id for i in loaded.items}) == 1000
    raw_a = {a["question_id"]: a["answer"] for a in json.loads(Path(loaded.files["answers"]).read_text())}
    assert all(item.answer == raw_a[item.id] for item in loaded.items)


def test_answers_are_matched_by_id_not_position(tmp_path: Path) -> None:
    qs, ans = _qa(4)
    _write_pair(tmp_path, "MSVD_Zero_Shot_QA", qs, list(reversed(ans)))
    items = load_items(BENCHMARKS["msvd"], tmp_path).items
    assert [(i.id, i.answer) for i in items] == [(f"v_vid{k}_0", f"ans{k}") for k in range(4)]


def test_mismatched_ids_are_an_error(tmp_path: Path) -> None:
    qs, ans = _qa(3)
    ans[1]["question_id"] = "v_other_0"
    _write_pair(tmp_path, "MSVD_Zero_Shot_QA", qs, ans)
    with pytest.raises(FasterVLMError, match="do not match by question_id.*1 questions have no answer.*1 answers have no question"):
        load_items(BENCHMARKS["msvd"], tmp_path)


def test_duplicate_ids_and_bad_entries_are_errors(tmp_path: Path) -> None:
    qs, ans = _qa(2)
    _write_pair(tmp_path, "MSVD_Zero_Shot_QA", qs + qs[:1], ans)
    with pytest.raises(FasterVLMError, match="twice"):
        load_items(BENCHMARKS["msvd"], tmp_path)
    _write_pair(tmp_path, "MSVD_Zero_Shot_QA", [{"question": "x"}], ans)
    with pytest.raises(FasterVLMError, match="entry 0 must be an object with question_id"):
        load_items(BENCHMARKS["msvd"], tmp_path)


def test_missing_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FasterVLMError, match="pass --data-root the folder that holds MSVD_Zero_Shot_QA"):
        load_items(BENCHMARKS["msvd"], tmp_path)


def test_limit_on_the_full_files_gives_the_1k_subset(tmp_path: Path) -> None:
    qs, ans = _qa(5)
    extra_q, extra_a = _qa(3, offset=5)
    _write_pair(tmp_path / "subset", "TGIF_Zero_Shot_QA", qs, ans)
    _write_pair(tmp_path / "full", "TGIF_Zero_Shot_QA", qs + extra_q, list(reversed(ans + extra_a)), suffix="")
    subset = load_items(BENCHMARKS["tgif"], tmp_path / "subset")
    full = load_items(BENCHMARKS["tgif"], tmp_path / "full", limit=5)
    assert full.files["questions"].endswith("test_q.json")
    assert full.items == subset.items
    assert full.files["items_sha256"] == subset.files["items_sha256"]
    assert len(load_items(BENCHMARKS["tgif"], tmp_path / "full").items) == 8
    with pytest.raises(FasterVLMError, match="at least 1"):
        load_items(BENCHMARKS["tgif"], tmp_path / "full", limit=0)


def test_video_paths_follow_each_benchmark_rule(tmp_path: Path) -> None:
    qs, ans = _qa(1)
    anet = BENCHMARKS["activitynet"]
    _write_pair(tmp_path, anet.folder, qs, ans)
    item = load_items(anet, tmp_path).items[0]
    videos = tmp_path / "Activitynet_Zero_Shot_QA" / "all_test"
    videos.mkdir()
    assert video_path(anet, tmp_path, item) is None
    (videos / "v_vid0.mkv").write_bytes(b"x")
    assert video_path(anet, tmp_path, item) == videos / "v_vid0.mkv"
    (videos / "v_vid0.avi").write_bytes(b"x")  # .avi comes before .mkv in the original's order
    assert video_path(anet, tmp_path, item) == videos / "v_vid0.avi"
    assert BENCHMARKS["msrvtt"].videos(tmp_path) == tmp_path / "MSRVTT_Zero_Shot_QA" / "videos" / "all"
    assert BENCHMARKS["tgif"].video_stem("x") == "x"


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_user_defined_benchmark_file(tmp_path: Path, suffix: str) -> None:
    qs, ans = _qa(2)
    _write_pair(tmp_path, "MyQA", qs, ans, suffix="_dev")
    definition = {"name": "myqa", "folder": "MyQA", "video_dir": "clips", "video_prefix": "p_",
                  "questions": "test_q_dev.json", "answers": "test_a_dev.json", "extensions": ["webm"]}
    spec = tmp_path / f"myqa{suffix}"
    if suffix == ".json":
        spec.write_text(json.dumps(definition))
    else:
        spec.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in definition.items()))
    bench = get_benchmark(str(spec))
    assert (bench.name, bench.title, bench.extensions) == ("myqa", "myqa", (".webm",))
    items = load_items(bench, tmp_path).items
    (tmp_path / "MyQA" / "clips").mkdir()
    (tmp_path / "MyQA" / "clips" / "p_vid1.webm").write_bytes(b"x")
    assert video_path(bench, tmp_path, items[1]) == tmp_path / "MyQA" / "clips" / "p_vid1.webm"


def test_bad_benchmark_names_and_files(tmp_path: Path) -> None:
    assert get_benchmark("MSVD-QA") is BENCHMARKS["msvd"]
    with pytest.raises(FasterVLMError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "folder": "X", "colour": "red"}))
    with pytest.raises(FasterVLMError, match="unknown keys colour; missing keys video_dir"):
        get_benchmark(str(bad))
