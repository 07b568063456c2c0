"""The `fastervlm` command: argument parsing only; every command calls the library's public API.

Each command group lives in its own module exposing `add_parser(subparsers)`; modules import torch and the
library inside their handlers, so `fastervlm --help` stays fast. Every parser is a `parser.Parser` (no
abbreviations, deprecated spellings with a note); `common.py` holds the flags several commands share.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from fastervlm import __version__

COMMAND_MODULES = ("answer", "methods", "eval", "show", "web", "bench")


def build_parser() -> argparse.ArgumentParser:
    from fastervlm.cli.common import MODEL_RULE
    from fastervlm.cli.parser import Parser

    parser = Parser(
        prog="fastervlm",
        description="Training-free visual token pruning for video VLMs ([CLS] attention, FasterVLM), "
        "with an evaluation harness, a benchmark and pictures of the kept tokens.",
        epilog=MODEL_RULE,
    )
    parser.add_argument("--version", action="version", version=f"fastervlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"fastervlm.cli.{name}").add_parser(subparsers)
    return parser


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a cluster scheduler's or a service manager's stop) ends a command as Ctrl-C does: work in flight is
    finished and kept (a judge run writes its judgments file; its requests in flight still reach the cache)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; FasterVLMError becomes a one-line message and exit code 2, Ctrl-C or SIGTERM exit code 130."""
    from fastervlm.cli.common import CliParameterNames
    from fastervlm.errors import BudgetError, FasterVLMError

    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return int(args.handler(args) or 0)
    except BudgetError as err:  # the library names its parameters (keep=); the CLI its flags (--keep)
        print(f"fastervlm: error: {err.render(CliParameterNames())}", file=sys.stderr)
        return 2
    except FasterVLMError as err:
        print(f"fastervlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastervlm: interrupted; work already written is kept.", file=sys.stderr)
        return 130
