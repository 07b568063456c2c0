"""One flag style: `--method-option [METHOD:]KEY=VALUE` everywhere (`--global-budget` and bench's
`--methods fastv:layer=3` are aliases), space-separated lists with commas accepted, and `fastervlm methods`
printing what the registry declares."""

from __future__ import annotations

import argparse

import pytest

from fastervlm.cli import main
from fastervlm.cli.bench import parse_methods
from fastervlm.cli.common import add_generation_arguments, add_method_arguments, method_settings, parse_setting
from fastervlm.errors import BudgetError
from fastervlm.methods import baseline_method, default_method, list_methods
from fastervlm.methods import method_settings as registry_settings


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    add_generation_arguments(parser)
    return parser.parse_args(argv)


def test_global_budget_is_an_alias_of_the_method_option() -> None:
    flag = method_settings(_parse(["--keep", "4", "--global-budget"]))
    option = method_settings(_parse(["--keep", "4", "--method-option", "global_budget=true"]))
    assert flag == option and flag[1]["global_budget"] is True


def test_a_scoped_option_must_name_the_method_that_runs() -> None:
    assert method_settings(_parse(["--method", "fastv", "--keep", "4", "--method-option", "fastv:layer=3"]))[1] == {
        "keep": 4, "layer": 3}
    with pytest.raises(BudgetError, match="scoped to fastv.*--method fastv"):
        method_settings(_parse(["--method", "random", "--keep", "4", "--method-option", "fastv:layer=3"]))


@pytest.mark.parametrize("text, parsed", [
    ("layer=3", (None, "layer", 3)), ("fastv:layer=3", ("fastv", "layer", 3)), ("global-budget=true", (None, "global_budget", True)),
    ("x=0.5", (None, "x", 0.5)), ("name=a:b", (None, "name", "a:b")),
])
def test_parse_setting(text: str, parsed: tuple) -> None:
    assert parse_setting(text) == parsed


def test_bench_methods_alias_and_method_option_are_the_same() -> None:
    alias = parse_methods(["fastervlm", "fastv:layer=3"])
    option = parse_methods(["fastervlm", "fastv"], ["fastv:layer=3"])
    assert alias == option == (["fastervlm", "fastv"], {"fastv": {"layer": 3}})
    assert parse_methods(["fastervlm,fastv:layer=3,random:seed=2"]) == (
        ["fastervlm", "fastv", "random"], {"fastv": {"layer": 3}, "random": {"seed": 2}})
    assert parse_methods(["random:seed=2,keep=3"])[1] == {"random": {"seed": 2, "keep": 3}}  # the older comma form
    assert parse_methods(["fastervlm", "random"], ["seed=5"])[1] == {"random": {"seed": 5}}  # goes where it fits


@pytest.mark.parametrize("methods, options, words", [
    (["fastervlm"], ["fastv:layer=3"], "fastv is not measured"),
    (["fastervlm", "random"], ["layer=3"], "none of the measured methods"),
    (["fastv:layer"], [], "--methods 'fastv:layer' is not KEY=VALUE"),
])
def test_bench_method_settings_errors(methods: list[str], options: list[str], words: str) -> None:
    with pytest.raises(BudgetError, match=words):
        parse_methods(methods, options)


def test_bench_lists_accept_commas(tmp_path, capsys, monkeypatch) -> None:
    """`--reductions 0.5,0.9` is `--reductions 0.5 0.9`: the configurations reach the benchmark the same."""
    from fastervlm import bench

    seen = []

    def stop(source, configs, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append([config.label for config in configs])
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_benchmark", stop)
    monkeypatch.setattr(bench.ModelSource, "tiny", staticmethod(lambda device=None: bench.ModelSource("tiny")))
    for argv in (["--reductions", "0.5,0.9"], ["--reductions", "0.5", "0.9"]):
        assert main(["bench", "--device", "cpu", "--methods", "fastervlm", "--out", str(tmp_path), *argv]) == 130
    assert seen[0] == seen[1] == ["none", "fastervlm reduction=0.5", "fastervlm reduction=0.9"]
    capsys.readouterr()


def test_methods_command_prints_what_each_method_declares(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    blocks = {block.split()[0]: block for block in out.split("\n\n") if block.strip()}
    assert f"Without --method: {default_method(True)} when a budget is given, else {baseline_method()}." in out
    for name, cls in list_methods().items():
        block = blocks[name]
        where = block.splitlines()[0][11:33].strip()
        if cls.baseline or cls.budget == "unbudgeted":
            assert where == "—  keeps every token" and "before the projector" not in block
        else:
            assert where == {"vision": "before the projector", "llm": "inside the LLM"}[cls.stage]
        assert cls.summary in block and (cls.reference in block if cls.reference else "reference" not in block)
        for setting in registry_settings(name):
            assert f"{setting.name}={setting.default!r}" in block.splitlines()[0]
            assert " ".join(f"{setting.name}: {setting.help}".split()) in " ".join(block.split())
