"""`fastervlm methods`: the registered pruning methods, one line each."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list the pruning methods", description="List the registered pruning methods.")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import MISSING, fields

    from fastervlm.methods import list_methods

    for name, cls in list_methods().items():
        settings = ", ".join(
            f"{f.name}={f.default!r}" for f in fields(cls) if f.init and f.name not in ("keep", "reduction") and f.default is not MISSING
        )
        where = "before the projector" if cls.stage == "vision" else "inside the LLM"
        print(f"{name:<10} {where:<21} {cls.summary}" + (f"  [{settings}]" if settings else ""))
    return 0
