"""Arguments shared by several commands: model loading, pruning method and budget, decoding."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


SETTING_FLAGS = {"global_budget": "--global-budget", "seed": "--seed"}
"""Method settings that have a flag of their own, as aliases: `--global-budget` is `--method-option
global_budget=true`; `--seed` (answer, show) also seeds a method that takes a seed."""


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """--method, the budget flags and --method-option [METHOD:]KEY=VALUE (with --global-budget as an alias)."""
    group = parser.add_argument_group("pruning")
    group.add_argument("--method", help="pruning method; without it, the default method when a budget is given, else "
                       "no pruning (`fastervlm methods` lists them and names the default)")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--keep", type=int, metavar="L", help="visual tokens kept per frame (an image is one frame)")
    budget.add_argument("--reduction", type=float, metavar="R",
                        help="fraction of visual tokens dropped: L = round(N * (1 - R)), e.g. 0.9 -> 26 of 256")
    group.add_argument("--method-option", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                       help="a setting of the method, e.g. --method fastv --method-option layer=3 (repeatable; "
                       "`fastervlm methods` lists each method's settings)")
    group.add_argument("--global-budget", dest="method_option", action="append_const", const="global_budget=true",
                       help="alias of --method-option global_budget=true: spend frames x L patches over the whole "
                       "video instead of L per frame (the methods with a global_budget setting in `fastervlm methods`)")


class CliParameterNames(dict):
    """How the CLI spells the library's parameters in error messages (BudgetError.render): the budget and the
    settings with a flag of their own, and `--method-option NAME` for every other method setting."""

    def __init__(self) -> None:
        super().__init__(keep="--keep", reduction="--reduction", **SETTING_FLAGS)

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
        raise BudgetError(f"{flag} {text!r} is not KEY=VALUE (or METHOD:KEY=VALUE), e.g. {flag} layer=3 or "
                          f"{flag} fastv:layer=3.")
    return scope.strip() or None, key.strip().replace("-", "_"), _parse_value(value.strip())


def settings_by_method(options: Sequence[str], flag: str = "--method-option") -> dict[str | None, dict[str, Any]]:
    """Repeated [METHOD:]KEY=VALUE flags -> {METHOD or None (every method): {key: value}}."""
    scoped: dict[str | None, dict[str, Any]] = {}
    for option in options:
        scope, key, value = parse_setting(option, flag)
        scoped.setdefault(scope, {})[key] = value
    return scoped


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
    """The method and its settings from the parsed flags (only those the user gave), checked against the registry
    before any model loads (`checked_method`).

    check_budget=False (the sweep, whose budgets and methods come from its own flags): only parse; the method is
    what --method says (None when absent) and settings scoped to a method are refused.
    """
    if check_budget:
        pruner_request = checked_method(args)
        return pruner_request.method, pruner_request.settings
    scoped = settings_by_method(args.method_option)
    _refuse_scopes(scoped, None)
    return args.method, _budget(args) | scoped.get(None, {})


@dataclass(frozen=True)
class MethodRequest:
    """A method (resolved through the registry: never None) and the settings the flags gave it."""

    method: str
    settings: dict[str, Any]


def checked_method(args: argparse.Namespace) -> MethodRequest:
    """--method, the budget and --method-option as one registry method and its settings, with every check that
    needs no model: a setting without a budget, unknown methods and settings, a setting scoped to another method,
    the method's own checks, --reduction outside [0, 1] and a negative --keep. (A --keep above the model's patches
    per frame can only be refused once the model's config is read.) Prints a note for a budget-less method that
    would prune nothing."""
    from fastervlm.methods import create_pruner, default_method, get_method, has_setting

    scoped = settings_by_method(args.method_option)
    settings = _budget(args) | scoped.get(None, {})
    budget_given = _has_budget(settings)
    _refuse_settings_without_budget(args.method, settings)
    method = args.method or default_method(budget_given)
    get_method(method)  # an unknown name first, before a scope is compared with it
    _refuse_scopes(scoped, method)
    settings |= scoped.get(method, {})
    if getattr(args, "seed", None) is not None and "seed" not in settings and has_setting(method, "seed"):
        settings["seed"] = args.seed  # --seed also seeds a method that takes one unless --method-option seed= is given
    _check_budget_range(create_pruner(method, **settings))
    if not _has_budget(settings):
        _note_no_budget(args.method)
    return MethodRequest(method, settings)


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """--keep / --reduction as the library's parameters (only the one given)."""
    from fastervlm.methods.base import BUDGET_PARAMETERS

    return {key: getattr(args, key) for key in BUDGET_PARAMETERS if getattr(args, key, None) is not None}


def _has_budget(settings: dict[str, Any]) -> bool:
    from fastervlm.methods.base import BUDGET_PARAMETERS

    return any(settings.get(key) is not None for key in BUDGET_PARAMETERS)


def _refuse_scopes(scoped: dict[str | None, dict[str, Any]], method: str | None) -> None:
    """A METHOD: prefix on a command that runs one method must name that method."""
    from fastervlm.errors import BudgetError

    for scope, settings in scoped.items():
        if scope is not None and scope != method:
            example = f"{scope}:{next(iter(settings))}=..."
            runs = f"runs {method}" if method else "takes no METHOD: prefix"
            raise BudgetError(f"--method-option {example} is scoped to {scope}, but this command {runs}: drop the "
                              f"prefix{'' if method is None else f' or choose --method {scope}'}.")


def _refuse_settings_without_budget(method: str | None, settings: dict[str, Any]) -> None:
    """Method settings with neither a method nor a budget would silently prune nothing: refuse them."""
    from fastervlm.errors import BudgetError

    if method is None and settings and not _has_budget(settings):
        flags = ", ".join(CliParameterNames()[key] for key in settings)
        raise BudgetError(f"{flags} needs a budget: add --keep L or --reduction R (e.g. --reduction 0.9), "
                          "and --method for a method other than the default one.")


def _note_no_budget(method: str | None) -> None:
    """A method that takes a budget but got none keeps every token: say so rather than run unpruned silently."""
    import sys

    from fastervlm.methods import get_method

    if method is not None and get_method(method).budget != "unbudgeted":
        print(f"fastervlm: note: --method {method} without --keep or --reduction keeps every visual token "
              "(no pruning); add e.g. --reduction 0.9.", file=sys.stderr)


def _check_budget_range(pruner: Any) -> None:
    """The budget's checks that need no patch count: a negative --keep, a --reduction outside [0, 1]."""
    from fastervlm.errors import BudgetError

    keep = pruner.keep
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise BudgetError(f"{{keep}} must be a whole number of patches per frame, 0 or more (got {keep!r}).")
    pruner.per_frame_budget(keep or 0)  # with a patch count that any keep fits: only the reduction's range is checked


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
    """The decoding flags as GenerationSettings, which refuses a bad temperature or seed (before any model loads)."""
    from fastervlm.models.base import GenerationSettings

    check_max_new_tokens(args.max_new_tokens)
    return GenerationSettings(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature, seed=args.seed)


def check_device(device: str | None) -> None:
    """--device names a device torch can use here (cuda on a machine without a GPU is refused)."""
    from fastervlm.pipeline import resolve_device

    resolve_device(device)


@dataclass(frozen=True)
class Request:
    """What a command's flags ask of the model, checked before it loads: the method, its settings and decoding
    (None for a command without decoding flags)."""

    method: str
    settings: dict[str, Any]
    generation: Any = None


def check_before_loading(args: argparse.Namespace, *, decoding: bool = True) -> Request:
    """Every check of the pruning flags, the decoding flags (when the command has them: `decoding`) and --device
    that needs no model, so that a typo fails in a second rather than after minutes of loading (`answer`, `show`,
    `web`; `eval predict` and `bench` can call it too)."""
    method = checked_method(args)
    generation = generation_settings(args) if decoding else None
    check_device(getattr(args, "device", None))
    return Request(method.method, method.settings, generation)


def load_model(args: argparse.Namespace) -> Any:
    """fastervlm.load with the model flags (family-specific options only when given); without --model (show, web),
    the demo's tiny checkpoint, written into the cache on first use."""
    import fastervlm
    from fastervlm.demo import tiny_pipeline

    options: dict[str, Any] = {"video_tower": args.video_tower} if args.video_tower else {}
    if getattr(args, "keep_cls", False):
        options["keep_cls"] = True
    if args.model is None:
        return tiny_pipeline(device=args.device, dtype=args.dtype, **options)
    return fastervlm.load(args.model, device=args.device, dtype=args.dtype, **options)
