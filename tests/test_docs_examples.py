"""Every documented command runs as written, or is marked in its document as needing what this machine lacks
(real weights, GPUs, a server that runs until stopped), with its run time; and the documents agree with what
the code does (the `--json` fields, the sweep's default budgets, the paths they name)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from doc_blocks import ROOT, Block, blocks, command_lines, is_placeholder, run_bash, run_python, sandbox, split_command

DOCS = {name: ROOT / "docs" / name for name in ("evaluation.md", "flops.md", "transformers.md", "web.md", "benchmark.md",
                                                "methods.md", "vllm.md", "lmms-eval.md")}
RUN_HERE = {("evaluation.md", "bash"), ("evaluation.md", "python"), ("evaluation.md", "toml"), ("flops.md", "python")}
"""The unmarked blocks this file runs."""
RUN_ELSEWHERE = {("web.md", "python"): ("test_web_server.py", "test_the_docs_api_example_runs_as_written")}
"""Unmarked blocks that need a fixture of another test file (a running `fastervlm web`)."""
TIMED = re.compile(r"\d[\d.,-]*\s*(s|seconds?|minutes?|hours?)\b|not timed")


def _blocks(name: str, lang: str | None = None, *, run: bool = True) -> list[Block]:
    return [b for b in blocks(DOCS[name]) if (lang is None or b.lang == lang) and (b.not_run is None) == run]


def test_every_block_runs_or_is_marked_with_what_it_needs_and_its_time() -> None:
    for name in DOCS:
        for block in blocks(DOCS[name]):
            if block.not_run is not None:
                assert TIMED.search(block.not_run), f"{block.where()}: say how long it takes: {block.not_run}"
            elif block.lang in ("bash", "python", "toml"):
                elsewhere = RUN_ELSEWHERE.get((name, block.lang))
                assert (name, block.lang) in RUN_HERE or elsewhere, f"{block.where()}: runs nowhere; mark it or run it"
                if elsewhere:
                    file, test = elsewhere
                    assert f"def {test}(" in (ROOT / "tests" / file).read_text(), f"{block.where()}: {file}::{test}"
            else:  # a plain block is a layout or an output, never a command
                assert not re.search(r"^(fastervlm|python3?|pip|torchrun) ", block.text, re.M), block.where()
    assert any(b.not_run for b in _blocks("transformers.md", run=False))


@pytest.fixture
def judge(monkeypatch: pytest.MonkeyPatch):
    """A local OpenAI-compatible judge (yes/5 when the answer is in the prediction): OPENAI_BASE_URL points at it."""
    from fake_openai_server import FakeOpenAI

    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        yield server


def _msvd(data_root: Path) -> None:
    """MSVD-QA as the evaluation document expects it: three questions about two synthetic videos."""
    from eval_helpers import write_benchmark

    from fastervlm.eval.benchmarks import get_benchmark
    from fastervlm.tiny.video import write_synthetic_video

    write_benchmark(data_root, ["1", "2", "3"], missing=("1", "2", "3"))
    videos = get_benchmark("msvd").videos(data_root)
    for seed, stem in enumerate(("vid_1", "vid_2", "vid_3")):
        write_synthetic_video(videos / f"{stem}.mp4", num_frames=10, height=32, width=48, seed=seed)


def test_the_evaluation_document_runs_as_written(tmp_path: Path, tiny_checkpoint: Path, judge) -> None:
    from fastervlm.eval.benchmarks import get_benchmark
    from fastervlm.eval.rundir import RunDir

    folder = sandbox(tmp_path / "user", tiny_checkpoint)
    _msvd(folder / "eval" / "GPT_Zero_Shot_QA")
    (bash,) = _blocks("evaluation.md", "bash")
    outputs = run_bash(bash, folder)
    runs = folder / "runs" / "tiny-random-video-llava" / "msvd"
    assert sorted(p.name for p in runs.iterdir()) == ["fastervlm_r0.9", "none"]
    assert len(RunDir(runs / "none").predictions()) == 3 and (folder / "runs" / "report.md").is_file()
    assert judge.calls and "3 items judged in both runs" in outputs[-1]

    (toml,) = _blocks("evaluation.md", "toml")
    (folder / "my_qa.toml").write_text(toml.text)
    mine = get_benchmark(str(folder / "my_qa.toml"))
    assert (mine.name, mine.title, mine.folder, mine.video_dir, mine.video_prefix) == ("myqa", "MyQA", "MyQA", "clips", "")

    (python,) = _blocks("evaluation.md", "python")
    printed = run_python(python, folder)
    assert printed.count("tiny-random-video-llava/msvd/") == 2 and "| none |" in printed


def test_the_flops_example_prints_the_documents_table(tmp_path: Path) -> None:
    (python,) = _blocks("flops.md", "python")
    printed = run_python(python, tmp_path)
    text = DOCS["flops.md"].read_text()
    table = text[text.index(python.text) + len(python.text):]
    rows = [line for line in table.splitlines() if line.startswith("| ")][:6]
    assert printed.splitlines() == rows


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every `fastervlm` line of every bash (or plain) block in README.md and docs/, marked or not, that names no
    placeholder."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in blocks(path):
            if block.lang not in ("bash", ""):
                continue
            for line in command_lines(block.text):
                _, words = split_command(line)
                if words[:1] == ["fastervlm"] and not is_placeholder(words):
                    found.append((block.where(), words[1:]))
    return found


def test_every_documented_command_line_parses_without_an_old_spelling() -> None:
    from fastervlm.cli import build_parser

    commands = _documented_commands()
    assert len(commands) > 30
    for where, argv in commands:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                build_parser().parse_args(argv)
            except SystemExit as exit_:
                pytest.fail(f"{where}: fastervlm {' '.join(argv)} does not parse (exit {exit_.code}): {err.getvalue()}")
        assert "deprecated" not in err.getvalue(), f"{where}: fastervlm {' '.join(argv)}: {err.getvalue()}"
        if argv[0] in ("show", "web", "bench") and not {"--decode", "--geometry"} & set(argv):
            assert "--model" in argv, f"{where}: fastervlm {' '.join(argv)}: give --model (tiny, or a folder)"


def _readme_json_fields() -> tuple[list[str], list[str]]:
    """The README's `--json` field list and the stages it lists under `timings`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("Fields of `--json`:"):]
    section = section[:section.index("\n\n")]
    fields = re.findall(r"^- `(\w+)`", section, re.M)
    stages = re.findall(r"`(\w+)`", section[section.index("- `timings`"):].split("\n- ")[0])[1:]
    return fields, stages


def test_the_readme_lists_the_json_fields_answer_prints(capsys, tiny_checkpoint: Path, synthetic_video: Path) -> None:
    from fastervlm.cli import main

    assert main(["answer", "--model", str(tiny_checkpoint), "--video", str(synthetic_video), "--question", "What?",
                 "--reduction", "0.9", "--max-new-tokens", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    fields, stages = _readme_json_fields()
    assert fields == list(printed), "README's fields of --json, in the order answer prints them"
    assert sorted(stages) == sorted(printed["timings"])


def test_the_sweeps_default_reductions_are_the_documented_ones(capsys) -> None:
    from fastervlm.cli import build_parser
    from fastervlm.cli.eval import DEFAULT_REDUCTIONS

    documented = " ".join(f"{r:g}" for r in DEFAULT_REDUCTIONS)
    assert documented == "0.5 0.75 0.9 0.95"
    assert f"`--reductions` default to {documented}" in (ROOT / "README.md").read_text()
    assert f"`--reductions` defaults to {documented}" in DOCS["evaluation.md"].read_text()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "sweep", "--help"])
    assert f"(default {documented})" in " ".join(capsys.readouterr().out.split())


def test_paths_the_documents_name_exist() -> None:
    texts = {path: path.read_text() for path in [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md")]}
    named = {(path.name, match) for path, text in texts.items() for match in re.findall(r"`((?:src|tests|docs)/[\w./-]+)`", text)}
    assert len(named) > 10
    missing = [(doc, name) for doc, name in named if not (ROOT / name).exists()]
    assert not missing, missing
