"""Benchmarks as data: the four definitions, question/answer matching by id, --limit, user-defined files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from eval_helpers import SAMPLE_ITEMS

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


def test_the_builtin_benchmarks_are_the_packaged_files_in_name_order() -> None:
    from importlib import resources

    from fastervlm.eval.benchmarks import BUILTIN_DIR, benchmark_from_text

    files = sorted(f for f in resources.files("fastervlm.eval").joinpath(BUILTIN_DIR).iterdir() if f.name.endswith(".toml"))
    parsed = [benchmark_from_text(f.read_text(), ".toml", f.name) for f in files]
    assert list(BENCHMARKS.values()) == parsed
    assert list(BENCHMARKS) == ["tgif", "msvd", "msrvtt", "activitynet"]  # the seed's column order
    assert (BENCHMARKS["activitynet"].video_prefix, BENCHMARKS["msrvtt"].video_dir) == ("v_", "videos/all")


def test_cli_help_lists_the_packaged_benchmarks_without_importing_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from fastervlm.cli import build_parser\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['eval', 'predict', '--help'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_src_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tgif, msvd, msrvtt, activitynet or a .json/.toml" in " ".join(done.stdout.split())


@pytest.mark.slow
def test_a_built_wheel_carries_the_benchmark_files_and_reads_them_from_the_zip(tmp_path: Path) -> None:
    """The wheel is imported as a zip (zipimport): the definitions must come through importlib.resources."""
    pytest.importorskip("setuptools")
    repo = Path(__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    shutil.copytree(repo / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, tree / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("fastervlm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        packaged = sorted(Path(n).name for n in z.namelist() if "/benchmark_defs/" in n)
    assert packaged == sorted(p.name for p in (repo / "src/fastervlm/eval/benchmark_defs").iterdir())
    code = "import fastervlm.eval.benchmarks as b; print(b.__file__); print(','.join(b.BENCHMARKS))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(wheel)})
    assert done.returncode == 0, done.stderr
    where, names = done.stdout.split()
    assert where.startswith(str(wheel)) and names == "tgif,msvd,msrvtt,activitynet"


def _src_env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_an_empty_question_file_is_refused(tmp_path: Path) -> None:
    folder = _write_pair(tmp_path, "MSVD_Zero_Shot_QA", [], [])
    with pytest.raises(FasterVLMError, match=f"no questions in {folder / 'test_q_1k.json'}"):
        load_items(BENCHMARKS["msvd"], tmp_path)


def test_an_empty_question_file_fails_predict_before_any_run_is_made(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastervlm.cli import main

    _write_pair(tmp_path / "data", "MSVD_Zero_Shot_QA", [], [])
    code = main(["eval", "predict", "--benchmarks", "msvd", "--data-root", str(tmp_path / "data"), "--model",
                 str(tmp_path / "no-model"), "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "no questions in" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_sample_files_in_the_real_schema_load_and_match(name: str, sample_data_root: Path) -> None:
    loaded = load_items(BENCHMARKS[name], sample_data_root)
    rows = SAMPLE_ITEMS[name]
    assert [(i.id, i.video_name, i.question, i.answer) for i in loaded.items] == [
        (f"v_{v}_{n}", v, q, a) for v, n, q, a, _ in rows]
    assert loaded.files["questions"].endswith(f"{BENCHMARKS[name].folder}/test_q_1k.json")


@pytest.mark.shared_data("FASTERVLM_SHARED_BENCHMARKS")
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_shared_1k_files_load_and_match(name: str, shared_benchmarks: Path) -> None:
    loaded = load_items(BENCHMARKS[name], shared_benchmarks)
    assert len(loaded.items) == 1000
    assert len({i.id for i in loaded.items}) == 1000
    raw_a = {a["question_id"]: a["answer"] for a in json.loads(Path(loaded.files["answers"]).read_text())}
    assert all(item.answer == raw_a[item.id] for item in loaded.items)


@pytest.mark.shared_data("FASTERVLM_SHARED_BENCHMARKS")
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_the_sample_files_have_the_real_files_schema(name: str, shared_benchmarks: Path, sample_data_root: Path) -> None:
    """The generated samples stay true to the real files: the same keys and value types, the same id rule."""
    def shape(path: Path) -> set[tuple[tuple[str, str], ...]]:
        return {tuple(sorted((k, type(v).__name__) for k, v in entry.items())) for entry in json.loads(path.read_text())}

    for file in ("test_q_1k.json", "test_a_1k.json"):
        real, sample = (root / BENCHMARKS[name].folder / file for root in (shared_benchmarks, sample_data_root))
        assert shape(sample) <= shape(real), file
    real_q = json.loads((shared_benchmarks / BENCHMARKS[name].folder / "test_q_1k.json").read_text())
    assert all(q["question_id"].startswith(f"v_{q['video_name']}_") for q in real_q)


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


@pytest.mark.parametrize("field, value, expected", [
    ("question", None, "question is null, not a non-empty text"),
    ("question", "", 'question is "", not a non-empty text'),
    ("question", ["what?"], 'question is ["what?"], not a non-empty text'),
    ("video_name", 7, "video_name is 7, not a non-empty text"),
    ("question_id", None, "question_id is null, not a text or a whole number"),
    ("question_id", True, "question_id is true"),
])
def test_a_question_that_is_not_text_is_refused_naming_the_file_and_item(tmp_path: Path, field: str, value,
                                                                      expected: str) -> None:
    """A null question used to be asked as the text "None" and answered."""
    qs, ans = _qa(3)
    qs[1][field] = value
    folder = _write_pair(tmp_path, "MSVD_Zero_Shot_QA", qs, ans)
    with pytest.raises(FasterVLMError) as err:
        load_items(BENCHMARKS["msvd"], tmp_path)
    message = str(err.value)
    assert message.startswith(f"{folder / 'test_q_1k.json'} entry 1 (question_id ") and expected in message, message
    assert "Fix or remove that entry" in message


def test_a_null_answer_is_refused(tmp_path: Path) -> None:
    qs, ans = _qa(2)
    ans[0]["answer"] = None
    folder = _write_pair(tmp_path, "MSVD_Zero_Shot_QA", qs, ans)
    with pytest.raises(FasterVLMError, match=rf"{folder / 'test_a_1k.json'} entry 0 \(question_id \"v_vid0_0\"\): "
                                             r"answer is null"):
        load_items(BENCHMARKS["msvd"], tmp_path)


def test_a_null_question_fails_predict_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fastervlm.cli import main

    qs, ans = _qa(2)
    qs[0]["question"] = None
    _write_pair(tmp_path / "data", "MSVD_Zero_Shot_QA", qs, ans)
    code = main(["eval", "predict", "--benchmarks", "msvd", "--data-root", str(tmp_path / "data"), "--model",
                 str(tmp_path / "no-model"), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "question is null" in err and "no-model" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


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
