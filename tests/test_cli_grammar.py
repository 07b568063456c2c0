"""One grammar for every command: no abbreviations, one name per idea (old spellings work for one release, with a
note), one rule for --model, and the tiny model named as such wherever it runs."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterator

import pytest

from fastervlm.cli import build_parser, main
from fastervlm.cli.common import TINY_MODEL
from fastervlm.errors import FasterVLMError


def _parsers(parser: argparse.ArgumentParser | None = None, name: str = "fastervlm") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the command tree, by its command line."""
    parser = parser or build_parser()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {command}")


def _flags() -> Iterator[tuple[str, str, argparse.Action]]:
    """(command, spelling, action) for every current spelling of every option (deprecated ones left out)."""
    for command, parser in _parsers():
        for action in parser._actions:
            for spelling in action.option_strings:
                if spelling not in getattr(action, "deprecated_spellings", ()) and spelling.startswith("--"):
                    yield command, spelling, action


def _takes_several(action: argparse.Action) -> bool:
    return action.nargs in ("+", "*")


def test_no_parser_accepts_abbreviations() -> None:
    parsers = dict(_parsers())
    assert {"fastervlm answer", "fastervlm eval sweep", "fastervlm bench", "fastervlm web"} <= set(parsers)
    assert all(parser.allow_abbrev is False for parser in parsers.values()), \
        [name for name, parser in parsers.items() if parser.allow_abbrev]


def test_sweep_keep_is_not_read_as_keep_cls(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["eval", "sweep", "--data-root", "d", "--model", "m", "--out", "o", "--keep", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "fastervlm eval sweep: error: unrecognized arguments: --keep 3" in err
    sweep = build_parser().parse_args(["eval", "sweep", "--data-root", "d", "--model", "m", "--out", "o"])
    assert sweep.keep_cls is False


def test_a_near_miss_flag_names_the_one_meant(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "--method", "fastv"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "fastervlm bench: error: unrecognized arguments: --method fastv" in err
    assert "--method is not a flag of this command: did you mean --methods?" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["answer", "--model", "m", "--video", "v", "--question", "q", "--reductoin", "0.9"])
    assert "did you mean --reduction?" in capsys.readouterr().err


SPELLINGS = [  # (argv with the old spelling, the same with the new one, the old spelling, the new one, dest)
    (["eval", "predict", "--data-root", "d", "--model", "m", "--out", "o", "--benchmark", "msvd", "tgif"],
     "--benchmark", "--benchmarks", "benchmarks"),
    (["bench", "--out-dir", "somewhere"], "--out-dir", "--out", "out"),
    (["bench", "--keep", "26", "13"], "--keep", "--keeps", "keeps"),
    (["eval", "judge", "runs", "--cache-dir", "c"], "--cache-dir", "--judge-cache", "judge_cache"),
    (["eval", "sweep", "--data-root", "d", "--model", "m", "--out", "o", "--cache-dir", "c"], "--cache-dir",
     "--judge-cache", "judge_cache"),
]


@pytest.mark.parametrize("argv, old, new, dest", SPELLINGS)
def test_an_old_spelling_still_works_with_a_one_line_note(capsys, argv, old, new, dest) -> None:
    before = build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert err.strip() == (f"fastervlm: note: {old} is deprecated: use {new} (the old spelling goes away in the next "
                           "release).")
    after = build_parser().parse_args([new if part == old else part for part in argv])
    assert capsys.readouterr().err == ""
    assert getattr(before, dest) == getattr(after, dest) and getattr(after, dest) not in (None, [])
    assert vars(before) == vars(after)


@pytest.mark.parametrize("argv, old, new, dest", SPELLINGS)
def test_help_lists_the_new_spelling_and_names_the_old_one_deprecated(capsys, argv, old, new, dest) -> None:
    command = argv[: 2 if argv[0] == "eval" else 1]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text wraps anywhere
    assert f" {new} " in f" {out} " and f"({old}: the old spelling, deprecated)" in out
    assert f" {old} " not in out.replace(f"({old}:", "")


IDEAS = {"benchmark": ("--benchmark", "--benchmarks"), "method": ("--method", "--methods"),
         "reduction": ("--reduction", "--reductions"), "keep": ("--keep", "--keeps")}
"""The ideas a command takes one of or several of: one value is the singular name, several the plural one."""


def test_one_name_per_idea_across_commands() -> None:
    flags = list(_flags())
    for singular, plural in IDEAS.values():
        for command, spelling, action in flags:
            if spelling == plural:
                assert _takes_several(action), f"{command} {plural} must take several values"
            if spelling == singular:
                assert not _takes_several(action), f"{command} {singular} takes several values: call it {plural}"
    spellings = {spelling for _, spelling, _ in flags}
    assert {"--out-dir", "--output", "--output-dir", "--benchmark"}.isdisjoint(spellings)  # one name: --out
    judging = [(command, spelling) for command, spelling, _ in flags if command.startswith("fastervlm eval")]
    assert ("fastervlm eval judge", "--judge-cache") in judging and not any(s == "--cache-dir" for _, s in judging)
    several = {spelling for _, spelling, action in flags if _takes_several(action)}
    assert all(spelling.endswith("s") for spelling in several), several


def test_help_says_the_model_rule() -> None:
    from fastervlm.cli.common import MODEL_RULE

    assert "--model tiny" in build_parser().epilog == MODEL_RULE
    for command, spelling, action in _flags():
        if spelling == "--model":
            assert "`tiny`" in action.help, command


@pytest.mark.parametrize("argv", [
    ["answer", "--video", "v.mp4", "--question", "q"],
    ["eval", "predict", "--benchmarks", "msvd", "--data-root", "d", "--out", "o"],
    ["eval", "sweep", "--data-root", "d", "--out", "o"],
])
def test_answer_and_eval_refuse_to_run_without_a_model(capsys, argv) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "the following arguments are required: --model" in capsys.readouterr().err


class Asked(FasterVLMError):
    """Raised by a stand-in loader: proves what a command would have loaded."""


def _stand_in_loaders(monkeypatch) -> list:
    """Replace the tiny model's loader and fastervlm.load by stand-ins that record what they were asked for."""
    import fastervlm
    from fastervlm import demo
    from fastervlm.bench import configs

    asked: list = []

    def tiny(**options):  # noqa: ANN003, ANN202
        asked.append(("tiny", options.get("device")))
        raise Asked("tiny")

    def load(model, **options):  # noqa: ANN001, ANN003, ANN202
        asked.append(("load", str(model)))
        raise Asked("load")

    def tiny_source(device=None):  # noqa: ANN001, ANN202
        asked.append(("tiny", device))
        raise Asked("tiny")

    monkeypatch.setattr(demo, "tiny_pipeline", tiny)
    monkeypatch.setattr(fastervlm, "load", load)
    monkeypatch.setattr(configs.ModelSource, "tiny", staticmethod(tiny_source))
    return asked


WEB = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs the [web] extra (gradio)")
COMMANDS = [
    pytest.param(["answer", "--video", "{video}", "--question", "What?"], True, id="answer"),
    pytest.param(["show", "--video", "{video}", "--out", "{tmp}/kept.png"], False, id="show"),
    pytest.param(["web"], False, id="web", marks=WEB),
    pytest.param(["bench", "--in-process"], False, id="bench"),
    pytest.param(["eval", "predict", "--benchmarks", "msvd", "--data-root", "{data}", "--out", "{tmp}/runs"], True,
                 id="eval-predict"),
]


@pytest.fixture
def data_root(tmp_path):
    from eval_helpers import write_sample_benchmarks

    write_sample_benchmarks(tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize("argv, required", COMMANDS)
def test_model_tiny_is_the_tiny_model_on_every_command(monkeypatch, capsys, tmp_path, synthetic_video, data_root,
                                                       argv, required) -> None:
    asked = _stand_in_loaders(monkeypatch)
    argv = [part.format(video=synthetic_video, tmp=tmp_path, data=data_root) for part in argv]
    assert main([*argv, "--model", TINY_MODEL, "--device", "cpu"]) == 2
    assert asked == [("tiny", "cpu")]
    assert "deprecated" not in capsys.readouterr().err
    asked.clear()
    if required:
        return
    assert main([*argv, "--device", "cpu"]) == 2  # the deprecated fallback: the tiny model, with a note
    assert asked == [("tiny", "cpu")]
    command = argv[0]
    assert (f"fastervlm: note: {command} without --model runs the tiny random model; this default is deprecated: "
            "give --model tiny (or a checkpoint folder).") in capsys.readouterr().err


def test_a_folder_is_loaded_as_a_checkpoint(monkeypatch, tmp_path, synthetic_video) -> None:
    asked = _stand_in_loaders(monkeypatch)
    assert main(["answer", "--model", str(tmp_path), "--video", str(synthetic_video), "--question", "What?"]) == 2
    assert asked == [("load", str(tmp_path))]
