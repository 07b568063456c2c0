"""Arguments shared by several commands: model loading, pruning method and budget, decoding."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=required, help="checkpoint folder (original Video-LLaVA or a transformers VLM)")
    group.add_argument("--video-tower", help="LanguageBind_Video_merge folder (default: the checkpoint's mm_video_tower when local)")
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    group.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                       help="default: float32 on CPU, the checkpoint's dtype on CUDA")
    group.add_argument("--keep-cls", action="store_true",
                       help="transformers Video-LLaVA-hf: keep each frame's [CLS] token in front of its kept patches")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """--method and the budget flags; per-method settings via --method-option KEY=VALUE or their own flags."""
    group = parser.add_argument_group("pruning")
    group.add_argument("--method", help="pruning method (see `fastervlm methods`); default fastervlm when a budget "
                       "is given, else none")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--keep", type=int, metavar="L", help="visual tokens kept per frame (an image is one frame)")
    budget.add_argument("--reduction", type=float, metavar="R",
                        help="fraction of visual tokens dropped: L = round(N * (1 - R)), e.g. 0.9 -> 26 of 256")
    group.add_argument("--global-budget", action="store_true",
                       help="spend frames*L patches over the whole video instead of L per frame (the methods "
                       "with a global_budget setting in `fastervlm methods`)")
    group.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other setting of the method, e.g. --method fastv --method-option layer=3 "
                       "(repeatable; `fastervlm methods` lists each method's settings)")


class CliParameterNames(dict):
    """How the CLI spells the library's parameters in error messages (BudgetError.render): the budget and the
    flags of their own, and `--method-option NAME` for every other method setting."""

    def __init__(self) -> None:
        super().__init__(keep="--keep", reduction="--reduction", global_budget="--global-budget", seed="--seed")

    def __missing__(self, key: str) -> str:
        return f"--method-option {key}"


def parse_setting(text: str, flag: str = "--method-option") -> tuple[str | None, str, Any]:
    """'[METHOD:]KEY=VALUE' -> (METHOD or None, key with '-' as '_', typed value): the one syntax of method settings
    on every command; the METHOD: prefix scopes a setting to one method where a command runs several."""
    from fastervlm.errors import BudgetError

    scope, colon, assignment = text.partition(":")
    if not colon or "=" in scope:
        scope, assignment = "", text
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise BudgetError(f"{flag} {text!r} is not [METHOD:]KEY=VALUE, e.g. {flag} layer=3 or {flag} fastv:layer=3.")
    return scope.strip() or None, key.strip().replace("-", "_"), _parse_value(value.strip())


def split_list(values: Sequence[str] | str | None, kind: Callable[[str], Any] = str, flag: str = "") -> list[Any]:
    """A list flag's values: space-separated (the convention, argparse nargs) with commas also accepted, so
    `--reductions 0.5 0.9` and `--reductions 0.5,0.9` are the same list."""
    from fastervlm.errors import FasterVLMError

    if values is None:
        return []
    tokens = [values] if isinstance(values, str) else list(values)
    parts = [part.strip() for token in tokens for part in token.split(",") if part.strip()]
    try:
        return [kind(part) for part in parts]
    except ValueError as err:
        kind_name = getattr(kind, "__name__", "value")
        raise FasterVLMError(f"{flag or 'a list flag'}: {' '.join(tokens)!r} is not a list of {kind_name} values "
                             f"({err}).") from err


def _parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_settings(args: argparse.Namespace, *, check_budget: bool = True) -> tuple[str | None, dict[str, Any]]:
    """The method name and its settings from the parsed flags (only those the user gave).

    check_budget: refuse method settings without a budget and warn about a method without one (off for the sweep,
    whose budgets come from --reductions).
    """
    from fastervlm.errors import BudgetError

    settings: dict[str, Any] = {}
    if args.keep is not None:
        settings["keep"] = args.keep
    if args.reduction is not None:
        settings["reduction"] = args.reduction
    if args.global_budget:
        settings["global_budget"] = True
    for option in args.method_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise BudgetError(f"--method-option {option!r} is not KEY=VALUE, e.g. --method-option layer=3.")
        settings[key.replace("-", "_")] = _parse_value(value)
    if getattr(args, "seed", None) is not None and "seed" not in settings and _has_setting(args.method, "seed"):
        settings["seed"] = args.seed  # --seed also seeds a random method unless --method-option seed= says otherwise
    if check_budget:
        _check_budget(args.method, settings)
    return args.method, settings


def _check_budget(method: str | None, settings: dict[str, Any]) -> None:
    """A pruning request without a budget prunes nothing: refuse it or say so, rather than run unpruned silently."""
    import sys

    from fastervlm.errors import BudgetError

    if "keep" in settings or "reduction" in settings:
        return
    if method is None and settings:
        flags = ", ".join("--global-budget" if key == "global_budget" else f"--method-option {key}" for key in settings)
        raise BudgetError(f"{flags} needs a budget: add --keep L or --reduction R (e.g. --reduction 0.9), "
                          "and --method for a method other than fastervlm.")
    if method not in (None, "none"):
        print(f"fastervlm: note: --method {method} without --keep or --reduction keeps every visual token "
              "(no pruning); add e.g. --reduction 0.9.", file=sys.stderr)


def _has_setting(method: str | None, name: str) -> bool:
    from dataclasses import fields

    from fastervlm.methods import list_methods

    cls = list_methods().get(method or "")
    return cls is not None and any(f.name == name for f in fields(cls))


def add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int = 1024) -> None:
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="bound on the answer's length (default %(default)s)")
    group.add_argument("--sample", action="store_true",
                       help="sample as the original does (temperature 0.1, top_p from generation_config.json) instead of greedy")
    group.add_argument("--temperature", type=float, default=0.1, help="with --sample (default %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="random seed for sampling and random methods (default %(default)s)")
    group.add_argument("--flip", action="store_true", help="flip the frames horizontally (the original flips at random, p = 0.5)")


def check_max_new_tokens(value: int) -> None:
    from fastervlm.errors import FasterVLMError

    if value < 1:
        raise FasterVLMError(f"--max-new-tokens must be at least 1 (got {value}).")


def generation_settings(args: argparse.Namespace) -> Any:
    from fastervlm.errors import FasterVLMError
    from fastervlm.models.base import GenerationSettings

    check_max_new_tokens(args.max_new_tokens)
    if args.sample and args.temperature <= 0:
        raise FasterVLMError("--temperature must be above 0 with --sample; leave out --sample for greedy decoding.")
    return GenerationSettings(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature, seed=args.seed)


def load_model(args: argparse.Namespace) -> Any:
    """fastervlm.load with the model flags (family-specific options only when given)."""
    import fastervlm

    options: dict[str, Any] = {"video_tower": args.video_tower} if args.video_tower else {}
    if getattr(args, "keep_cls", False):
        options["keep_cls"] = True
    return fastervlm.load(args.model, device=args.device, dtype=args.dtype, **options)
