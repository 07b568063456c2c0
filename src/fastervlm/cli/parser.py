"""The CLI's one grammar, shared by every command and subcommand.

- No abbreviations: `--keep` is never read as `--keep-cls`, nor `--method` as `--methods`. A flag a command does
  not take is an error at that command, naming the flag it probably meant.
- A renamed flag keeps its old spelling for one release (`deprecate`): it still works, prints a one-line note
  naming the new one, and is left out of the help's option list.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
from collections.abc import Sequence
from typing import Any

NOTE = "fastervlm: note:"


class HelpFormatter(argparse.HelpFormatter):
    """Lists an option under its current spelling only (a deprecated one is named in its help text)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        old = getattr(action, "deprecated_spellings", frozenset())
        if not old:
            return super()._format_action_invocation(action)
        current = argparse.Action(option_strings=[s for s in action.option_strings if s not in old], dest=action.dest,
                                  nargs=action.nargs, metavar=action.metavar)
        return super()._format_action_invocation(current)


class Parser(argparse.ArgumentParser):
    """argparse with `allow_abbrev=False` and an error that names the closest flag; subcommand parsers made from
    it (add_subparsers) are Parsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:  # a command (not a group of them): it knows what it takes
            self.error(unrecognized(self, extras))
        return namespace, extras


def unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """The error for arguments a command does not take, with the flag each unknown one probably meant."""
    known = [s for action in parser._actions if action.help is not argparse.SUPPRESS
             for s in action.option_strings if s not in getattr(action, "deprecated_spellings", ())]
    hints = []
    for extra in extras:
        flag = extra.split("=", 1)[0]
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.8)
            if close:
                hints.append(f"{flag} is not a flag of this command: did you mean {close[0]}?")
    return "; ".join([f"unrecognized arguments: {' '.join(extras)}", *hints]) + f" (see {parser.prog} --help)"


def deprecate(action: argparse.Action, *old: str) -> argparse.Action:
    """Mark `old` spellings of `action` (given to add_argument after the current one) as deprecated: they keep
    working for one release, with a note, and the help names them once."""
    unknown = [spelling for spelling in old if spelling not in action.option_strings[1:]]
    if unknown:
        raise ValueError(f"{unknown} are not other spellings of {action.option_strings[0]}")
    action.deprecated_spellings = frozenset(old)  # type: ignore[attr-defined]
    action.__class__ = _noting(type(action))
    spelled = " and ".join(old)
    action.help = f"{action.help or ''} ({spelled}: the old spelling, deprecated)".lstrip()
    return action


def deprecation_note(old: str, new: str) -> str:
    return f"{NOTE} {old} is deprecated: use {new} (the old spelling goes away in the next release)."


@functools.cache
def _noting(action_class: type[argparse.Action]) -> type[argparse.Action]:
    """`action_class` that prints the deprecation note when it is called through an old spelling."""

    class Noting(action_class):  # type: ignore[misc, valid-type]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            if option_string in self.deprecated_spellings:
                print(deprecation_note(option_string, self.option_strings[0]), file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    Noting.__name__ = Noting.__qualname__ = f"Deprecating{action_class.__name__}"
    return Noting
