"""`fastervlm methods`: every registered method, where it acts, its summary, settings (defaults, help) and reference.

Everything printed comes from the registry (each method class declares it); nothing here names a method.
"""

from __future__ import annotations

import argparse
import textwrap

FOOTER = """Every pruning method takes the budget as --keep L (per frame) or --reduction R and keeps frames x L visual
tokens in total (the table's "# Token"). Other settings: --method-option KEY=VALUE (repeatable), e.g.
--method fastv --method-option layer=3. --global-budget is --method-option global_budget=true; --seed also
seeds a method that takes a seed unless --method-option seed= is given."""

WHERE = {"vision": "before the projector", "llm": "inside the LLM"}
"""Where a method of each stage acts."""
NO_ATTACH_POINT = "—  keeps every token"
"""Where a method without a budget (the baseline) acts: nowhere."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list the pruning methods",
                                   description="List the registered pruning methods: where each acts, what it does, "
                                   "its settings with their defaults, and the paper it follows.")
    parser.set_defaults(handler=run)


def where(cls: type) -> str:
    """Where a method acts: its stage's attach point, or none for a method that keeps every token."""
    return NO_ATTACH_POINT if cls.baseline or cls.budget == "unbudgeted" else WHERE[cls.stage]


def describe(name: str, cls: type) -> list[str]:
    """A method's lines: name, where, summary and [its settings=defaults]; then each setting's help; its reference."""
    from fastervlm.methods import method_settings

    settings = method_settings(cls)
    defaults = ", ".join(f"{s.name}={s.default!r}" for s in settings)
    lines = [f"{name:<10} {where(cls):<21} {cls.summary}" + (f"  [{defaults}]" if defaults else "")]
    for setting in settings:
        lines += textwrap.wrap(f"{setting.name}: {setting.help}", 110, initial_indent=" " * 11,
                               subsequent_indent=" " * 13, break_on_hyphens=False)
    if cls.reference:
        lines.append(" " * 11 + f"reference: {cls.reference}")
    return lines


def run(args: argparse.Namespace) -> int:
    from fastervlm.methods import baseline_method, default_method, list_methods

    for name, cls in list_methods().items():
        print("\n".join(describe(name, cls)) + "\n")
    print(f"Without --method: {default_method(True)} when a budget is given, else {baseline_method()}.")
    print(FOOTER)
    return 0
