"""Decoding settings that torch would fail on deep inside (a seed beyond 64 bits) or that would sample garbage (a
temperature that is not a finite positive number) are refused where they are made: by GenerationSettings, so the
Python API and every command (before any model loads) say the same."""

from __future__ import annotations

import math

import pytest

from fastervlm.cli import main
from fastervlm.errors import BudgetError, FasterVLMError
from fastervlm.methods import create_pruner
from fastervlm.models.base import GenerationSettings

TOO_BIG = 2**64


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -math.inf, -0.5, 0.0, "0.1"])
def test_sampling_needs_a_finite_positive_temperature(temperature) -> None:
    with pytest.raises(FasterVLMError, match=r"temperature \(--temperature\) must be a finite number above 0"):
        GenerationSettings(sample=True, temperature=temperature)


def test_greedy_decoding_ignores_the_temperature() -> None:
    assert math.isnan(GenerationSettings(sample=False, temperature=math.nan).temperature)


@pytest.mark.parametrize("seed", [TOO_BIG, -(2**63) - 1, 1.5, True, "7"])
def test_a_seed_must_fit_in_64_bits(seed) -> None:
    with pytest.raises(FasterVLMError, match=r"seed \(--seed\) must be a whole number that fits in 64 bits"):
        GenerationSettings(seed=seed)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 0])
def test_the_whole_64_bit_range_is_accepted(seed: int) -> None:
    import torch

    torch.manual_seed(GenerationSettings(seed=seed).seed)  # what generate does with it


@pytest.mark.parametrize("max_new_tokens", [0, -3, 2.5, None])
def test_max_new_tokens_is_a_positive_whole_number(max_new_tokens) -> None:
    with pytest.raises(FasterVLMError, match=r"max_new_tokens \(--max-new-tokens\) must be a whole number"):
        GenerationSettings(max_new_tokens=max_new_tokens)


def test_the_random_method_refuses_a_seed_torch_cannot_take() -> None:
    with pytest.raises(BudgetError, match="must fit in 64 bits"):
        create_pruner("random", reduction=0.5, seed=TOO_BIG)


@pytest.mark.parametrize("extra, message", [
    (["--sample", "--temperature", "nan"], "temperature (--temperature) must be a finite number above 0"),
    (["--sample", "--temperature", "inf"], "(got inf, e.g. 0.1)"),
    (["--sample", "--temperature", "-1"], "(got -1.0, e.g. 0.1)"),
    (["--seed", str(TOO_BIG)], "seed (--seed) must be a whole number that fits in 64 bits"),
    (["--seed", str(TOO_BIG), "--method", "random", "--reduction", "0.5"], "random's --seed must fit in 64 bits"),
])
@pytest.mark.parametrize("command", ["answer", "predict"])
def test_commands_refuse_them_before_loading(capsys, tmp_path, synthetic_video, command: str, extra, message) -> None:
    model = tmp_path / "no-such-checkpoint"
    if command == "answer":
        argv = ["answer", "--model", str(model), "--video", str(synthetic_video), "--question", "What?"]
    else:
        from eval_helpers import write_benchmark

        write_benchmark(tmp_path / "data", ["q0"])
        argv = ["eval", "predict", "--benchmarks", "msvd", "--data-root", str(tmp_path / "data"), "--model",
                str(model), "--out", str(tmp_path / "runs")]
    code = main([*argv, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "no-such-checkpoint" not in err and not (tmp_path / "runs").exists()
