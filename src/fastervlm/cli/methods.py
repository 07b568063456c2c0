"""`fastervlm methods`: the registered pruning methods, one line each, with their settings and defaults."""

from __future__ import annotations

import argparse

FOOTER = """
Pruning methods take the budget as --keep L (per frame) or --reduction R and keep frames x L visual
tokens in total (the table's "# Token"). Other settings: --method-option KEY=VALUE, e.g.
  --method fastv --method-option layer=3      (FastV's K; default 2)
  --method random --seed 1                    (--seed seeds random unless --method-option seed= is given)
  --method fastervlm --global-budget          (frames x L over the whole video instead of L per frame)"""


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
    print(FOOTER)
    return 0
