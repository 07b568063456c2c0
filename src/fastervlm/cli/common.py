"""Arguments shared by several commands: model loading, pruning method and budget, decoding."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


TINY_MODEL = "tiny"
"""`--model tiny`: the demo's tiny random checkpoint (a folder named tiny is `--model ./tiny`)."""
MODEL_RULE = ("Every command that runs a model takes --model: a checkpoint folder, or --model tiny for the demo's "
              "tiny random model (written into the cache on first use, no download; its weights are random, so its "
              "answers are noise, and every output names it tiny-random-...). `answer` and `eval` refuse to run "
              "without --model; `show`, `web` and `bench` still fall back to the tiny model for one release, with a "
              "note. `demo` always runs the tiny model; `methods`, `eval judge/report/compare` and `bench --decode` "
              "run none.")
"""The one rule for --model, printed by `fastervlm --help` and said in the README."""
MODEL_HELP = ("checkpoint folder (original Video-LLaVA or a transformers VLM), or `tiny`: the demo's tiny random model "
              "(its answers are noise)")


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--model and the loading options. required=False: the deprecated tiny fallback of show/web (see MODEL_RULE)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=required, metavar="DIR|tiny", help=MODEL_HELP + (
        "" if required else "; without it, the tiny model, with a note (deprecated: give --model tiny)"))
    group.add_argument("--video-tower", help="LanguageBind_Video_merge folder (default: the checkpoint's mm_video_tower when local)")
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    group.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                       help="default: float32 on CPU, the checkpoint's dtype on CUDA")
    group.add_argument("--keep-cls", action="store_true",
                       help="transformers Video-LLaVA-hf: keep each frame's [CLS] token in front of its kept patches")
    llm = parser.add_argument_group("LLM stage (the same answers either way)")
    llm.add_argument("--no-share-prefix", action="store_true", help="prefill every prompt whole instead of computing "
                     "the prompt prefix shared by the questions on one video once (slower; for measuring it)")
    llm.add_argument("--no-static-cache", action="store_true", help="on CUDA, decode on the dynamic KV cache without "
                     "compiling the step (the default there is a static cache with a compiled step, CUDA graphs)")
    llm.add_argument("--backend", choices=("transformers", "vllm"), default="transformers",
                     help="where the LLM stage runs: in this process (transformers, the default) or on a vLLM engine "
                     "(docs/vllm.md; methods inside the LLM such as fastv, and Qwen-VL's positions, are refused there)")
    llm.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                     help="a vLLM engine option with --backend vllm, repeatable (tensor_parallel_size=2, "
                     "gpu_memory_utilization=0.8, max_model_len=4096, enforce_eager=true, ...)")


def tiny_fallback(args: argparse.Namespace, command: str) -> None:
    """A command run without --model (show, web, bench) gets the tiny model for one more release, and a note."""
    import sys

    from fastervlm.cli.parser import NOTE

    if args.model is None:
        print(f"{NOTE} {command} without --model runs the tiny random model; this default is deprecated: give "
              f"--model {TINY_MODEL} (or a checkpoint folder).", file=sys.stderr)
        args.model = TINY_MODEL


def is_tiny_model(model: str | None) -> bool:
    """Whether --model names the project's tiny random model (`tiny`, or a folder holding a tiny checkpoint)."""
    from fastervlm.tiny.identity import is_tiny

    return model == TINY_MODEL or (model is not None and is_tiny(model))


def answer_length(model: str | None, default: int) -> int:
    """--max-new-tokens when it is not given: a tiny checkpoint's own short length, else `default` (read from the
    checkpoint's files, before it loads)."""
    from fastervlm.tiny.identity import TINY_MAX_NEW_TOKENS, default_max_new_tokens

    if model == TINY_MODEL:
        return TINY_MAX_NEW_TOKENS
    return default_max_new_tokens(model) if model is not None and is_tiny_model(model) else default


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


def list_parameter_names() -> CliParameterNames:
    """How the commands that take lists of budgets (`bench`, `eval sweep`) spell them: --keeps, --reductions."""
    names = CliParameterNames()
    names.update(keep="--keeps", reduction="--reductions")
    return names


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
    """A method (resolved through the registry: never None), the settings the flags gave it, and the method built
    from them once (checked against the model when it loads, never built again)."""

    method: str
    settings: dict[str, Any]
    pruner: Any = None


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
    pruner = create_pruner(method, **settings)
    check_budget_range(pruner)
    if not _has_budget(settings):
        _note_no_budget(args.method)
    return MethodRequest(method, settings, pruner)


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


def check_budget_range(pruner: Any) -> None:
    """The budget's checks that need no patch count: a negative --keep, a --reduction outside [0, 1]."""
    from fastervlm.errors import BudgetError

    keep = pruner.keep
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise BudgetError(f"{{keep}} must be a whole number of patches per frame, 0 or more (got {keep!r}).")
    pruner.per_frame_budget(keep or 0)  # with a patch count that any keep fits: only the reduction's range is checked


def add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int | None = None) -> None:
    """The decoding flags; `max_new_tokens` is the command's default answer length for real checkpoints (1024, the
    original's, unless given)."""
    from fastervlm.tiny.identity import ORIGINAL_MAX_NEW_TOKENS, TINY_MAX_NEW_TOKENS

    default = ORIGINAL_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    origin = "the original's" if default == ORIGINAL_MAX_NEW_TOKENS else "this command's"
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-new-tokens", type=int, metavar="N", help=f"bound on the answer's length (default: "
                       f"{default}, {origin}; on a tiny random checkpoint its own {TINY_MAX_NEW_TOKENS}, from its "
                       "generation_config.json)")
    parser.set_defaults(default_max_new_tokens=default)
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
    """The decoding flags as GenerationSettings (which refuses a bad temperature or seed, before any model loads);
    without --max-new-tokens, the length `answer_length` gives for --model."""
    from fastervlm.models.base import GenerationSettings

    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = answer_length(getattr(args, "model", None), args.default_max_new_tokens)
    check_max_new_tokens(max_new_tokens)
    return GenerationSettings(max_new_tokens=max_new_tokens, sample=args.sample, temperature=args.temperature, seed=args.seed)


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
    pruner: Any = None
    """The method built once from the flags (`Pipeline.pruner` checks it against the model)."""


def check_before_loading(args: argparse.Namespace, *, decoding: bool = True) -> Request:
    """Every check of the pruning flags, the decoding flags (when the command has them: `decoding`), --device and
    the files the flags name that needs no model, so that a typo fails in a second rather than after minutes of
    loading (`answer`, `show`; `web`, `eval` and `bench` run the parts that apply to them)."""
    check_files(args)
    method = checked_method(args)
    generation = generation_settings(args) if decoding else None
    check_device(getattr(args, "device", None))
    return Request(method.method, method.settings, generation, method.pruner)


def check_files(args: argparse.Namespace) -> None:
    """The inputs the flags name, before the model loads: --video / --image exist, --video-tower is a folder, the
    question is not empty (for the commands that have these flags)."""
    from pathlib import Path

    from fastervlm.errors import FasterVLMError
    from fastervlm.media import existing_file

    for kind in ("video", "image"):
        if getattr(args, kind, None) is not None:
            existing_file(args.__dict__[kind], kind)
    tower = getattr(args, "video_tower", None)
    if tower is not None and not Path(tower).expanduser().is_dir():
        raise FasterVLMError(f"--video-tower {tower} is not a folder: pass the LanguageBind_Video_merge checkpoint "
                             "folder, or leave it out to use the checkpoint's mm_video_tower.")
    question = getattr(args, "question", None)
    if question is not None and not question.strip():
        raise FasterVLMError("--question is empty: type a question about the video.")


def load_model(args: argparse.Namespace) -> Any:
    """fastervlm.load with the model flags (family-specific options only when given); `--model tiny`: the demo's
    tiny checkpoint, written into the cache on first use."""
    import fastervlm
    from fastervlm.demo import tiny_pipeline

    options: dict[str, Any] = {"video_tower": args.video_tower} if args.video_tower else {}
    if getattr(args, "keep_cls", False):
        options["keep_cls"] = True
    if getattr(args, "no_share_prefix", False):
        options["share_prefix"] = False
    if getattr(args, "no_static_cache", False):
        options["static_cache"] = False
    if getattr(args, "backend", "transformers") != "transformers":
        options["backend"] = args.backend
    if getattr(args, "engine_option", None):
        options["engine_settings"] = args.engine_option
    if args.model == TINY_MODEL:
        return tiny_pipeline(device=args.device, dtype=args.dtype, **options)
    return fastervlm.load(args.model, device=args.device, dtype=args.dtype, **options)


def say_model(pipeline: Any) -> None:
    """For a tiny random model, one line saying so (stderr): its answers are noise."""
    import sys

    from fastervlm.cli.parser import NOTE
    from fastervlm.tiny.identity import is_tiny, model_title

    if is_tiny(pipeline.path):
        print(f"{NOTE} the model is {model_title(pipeline.path)}.", file=sys.stderr)
