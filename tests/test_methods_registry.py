"""The method registry and its command-line face: names, defaults in one place, settings, `fastervlm methods`."""

from __future__ import annotations

import argparse

import pytest

from fastervlm.cli import main
from fastervlm.cli.common import add_generation_arguments, add_method_arguments, method_settings
from fastervlm.errors import BudgetError
from fastervlm.methods import LLMPruner, VisionPruner, create_pruner, list_methods


def test_every_method_is_registered_at_its_stage():
    methods = list_methods()
    assert {"fastervlm", "fastv", "none", "random", "pool", "vispruner", "visionzip", "divprune"} <= set(methods)
    assert issubclass(methods["fastv"], LLMPruner) and methods["fastv"].stage == "llm"
    for name in ("fastervlm", "none", "random", "pool", "vispruner", "visionzip", "divprune"):
        assert issubclass(methods[name], VisionPruner) and methods[name].stage == "vision"
    assert all(cls.summary for cls in methods.values())


def test_defaults_and_settings():
    assert create_pruner("fastv").settings() == {"method": "fastv", "keep": None, "reduction": None, "layer": 2}
    assert create_pruner("random", keep=4).settings() == {
        "method": "random", "keep": 4, "reduction": None, "global_budget": False, "seed": 0}
    assert create_pruner("fastervlm", reduction=0.9).global_budget is False
    # a setting added to an existing method leaves its recorded configurations (and run folder names) as they were
    assert create_pruner("fastervlm", reduction=0.9).settings() == {
        "method": "fastervlm", "keep": None, "reduction": 0.9, "global_budget": False}
    assert create_pruner("fastervlm", reduction=0.9, score="received").settings()["score"] == "received"
    assert create_pruner("fastv", reduction=0.9, layer=3).kept_visual_tokens(8, 256) == 208


def test_unknown_names_and_settings_are_clear_errors():
    with pytest.raises(BudgetError, match="fastv"):
        create_pruner("fastvv")
    with pytest.raises(BudgetError, match="layer"):  # the message lists the settings that exist
        create_pruner("fastv", ratio=0.5)
    with pytest.raises(BudgetError, match="global_budget"):
        create_pruner("pool", global_budget=True)


def test_methods_command_lists_each_method_on_one_line(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in list_methods():
        (line,) = [line for line in lines if line.startswith(f"{name} ")]
        assert list_methods()[name].summary in line
    assert any(line.startswith("fastv ") and "layer=2" in line and "inside the LLM" in line for line in lines)
    assert any(line.startswith("random ") and "seed=0" in line and "global_budget=False" in line for line in lines)
    settings_of = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    for name, shown in [("vispruner", ["important_ratio=0.5", "score='cls'", "global_budget=False"]),
                        ("visionzip", ["dominant_ratio=0.84375", "score='cls'"]),
                        ("divprune", ["global_budget=False"])]:
        assert "before the projector" in settings_of[name] and all(text in settings_of[name] for text in shown)
    assert "global_budget" not in settings_of["visionzip"]
    assert any("--method-option layer=" in line for line in lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_method_arguments(parser)
    add_generation_arguments(parser)
    return parser.parse_args(argv)


def test_method_flags_become_settings():
    assert method_settings(_parse(["--method", "fastv", "--reduction", "0.9", "--method-option", "layer=3"])) == (
        "fastv", {"reduction": 0.9, "layer": 3})
    assert method_settings(_parse(["--method", "random", "--keep", "4", "--seed", "7"])) == ("random", {"keep": 4, "seed": 7})
    assert method_settings(_parse(["--method", "random", "--seed", "7", "--method-option", "seed=2"]))[1]["seed"] == 2
    assert "seed" not in method_settings(_parse(["--method", "pool", "--keep", "4", "--seed", "7"]))[1]
    name, settings = method_settings(_parse(["--method", "fastv", "--keep", "4"]))
    assert create_pruner(name, **settings).layer == 2
