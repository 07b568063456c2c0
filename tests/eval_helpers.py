"""Helpers for the eval tests: run directories with hand-written predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastervlm.eval.rundir import JsonlAppender, RunDir


def make_run(
    path: Path,
    answers: dict[str, tuple[str, str | None]],
    *,
    benchmark: str = "msvd",
    model: str = "tiny",
    method: dict[str, Any] | None = None,
    tokens: int = 2048,
    rank: int = 0,
) -> RunDir:
    """A run directory whose items are {id: (gt answer, prediction or None for an error record)}."""
    run = RunDir(path)
    items = [{"id": i, "video_name": f"vid_{i}", "question": f"what is in {i}?", "answer": a} for i, (a, _) in answers.items()]
    config = {
        "format": 1,
        "benchmark": {"name": benchmark, "title": benchmark.upper(), "items": len(items)},
        "model": {"name": model},
        "method": method or {"method": "none", "keep": None, "reduction": None},
        "provenance": {},
    }
    run.create_or_check(config, items)
    with JsonlAppender(run.prediction_file(rank)) as out:
        for item, (_, pred) in zip(items, answers.values()):
            record = {"id": item["id"], "question": item["question"], "answer": item["answer"], "pred": pred,
                      "visual_tokens": tokens}
            out.write(record if pred is not None else {**record, "error": "no video"})
    return run
