"""The results tab's data: a runs directory written by `fastervlm eval`, read through `fastervlm.eval.report`.

The table and the plot are `Report.markdown()` and `Report.plot()`, exactly what `fastervlm eval report` writes.
The per-item browser lines up, for each (model, benchmark), every configuration's prediction and judge verdict
per item, and can keep only the items where the configurations disagree. No gradio import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastervlm.errors import FasterVLMError

if TYPE_CHECKING:
    from fastervlm.eval.metrics import ItemResult, Mode
    from fastervlm.eval.report import Report, RunResult

ITEM_COLUMNS = ("id", "video", "question", "reference answer")


@dataclass
class Cell:
    """One configuration's record for one item."""

    pred: str | None
    error: str | None = None
    verdict: ItemResult | None = None
    judged: bool = False

    def outcome(self) -> str | None:
        """"yes", "no", "error", or None (not judged, no yes/no, or not predicted yet)."""
        if self.error is not None:
            return "error"
        if self.verdict is None or self.verdict.correct is None:
            return None
        return "yes" if self.verdict.correct else "no"

    def answer_key(self) -> str | None:
        """The prediction as compared between configurations ("error" for an error), None when missing."""
        if self.error is not None:
            return "error"
        return None if self.pred is None else " ".join(self.pred.lower().split())

    def verdict_text(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        if self.pred is None:
            return "not predicted yet"
        if not self.judged:
            return "not judged"
        if self.verdict is None:
            return "unusable judge reply"
        correct = {True: "yes", False: "no", None: "–"}[self.verdict.correct]
        return f"{correct} · {self.verdict.score:g}"


@dataclass
class Group:
    """One model on one benchmark: its configurations (run folder names) and every item's cells."""

    label: str
    configurations: list[str]
    items: list[dict[str, str]]
    cells: dict[str, dict[str, Cell]]
    """configuration -> item id -> cell."""

    def disagree(self, item_id: str) -> bool:
        """The configurations' outcomes differ: their judge verdicts, or, where none of them is judged, their
        predicted answers (trimmed, lower-cased). An error is an outcome of its own."""
        cells = [c for c in (self.cells[name].get(item_id) for name in self.configurations) if c is not None]
        judged = any(c.verdict is not None for c in cells)
        outcomes = {c.outcome() if judged else c.answer_key() for c in cells} - {None}
        return len(outcomes) > 1

    def columns(self) -> list[str]:
        return [*ITEM_COLUMNS, *(f"{c} {part}" for c in self.configurations for part in ("answer", "verdict"))]

    def rows(self, only_disagreements: bool = False) -> list[list[str]]:
        out = []
        for item in self.items:
            if only_disagreements and not self.disagree(item["id"]):
                continue
            row = [item["id"], item.get("video_name", ""), item["question"], item["answer"]]
            for configuration in self.configurations:
                cell = self.cells[configuration].get(item["id"], Cell(None))
                row += [cell.pred or "", cell.verdict_text()]
            out.append(row)
        return out


@dataclass
class ResultsView:
    report: Report
    plot: Path | None
    groups: dict[str, Group]

    def markdown(self) -> str:
        return self.report.markdown()


def load_results(runs_dir: str | os.PathLike, plot_dir: str | os.PathLike, *, judge_model: str | None = None,
                 mode: Mode = "strict") -> ResultsView:
    """Every run under `runs_dir` as the report (plot written into `plot_dir`) and per-item groups."""
    from fastervlm.eval.report import build_report

    if not str(runs_dir).strip():
        raise FasterVLMError("give the folder that `fastervlm eval predict --out` wrote (it holds one folder per run).")
    runs_dir = Path(runs_dir).expanduser()
    if not runs_dir.is_dir():
        raise FasterVLMError(f"{runs_dir} is not a folder: give the folder that `fastervlm eval predict --out` wrote.")
    report = build_report([runs_dir], judge_model=judge_model or None, mode=mode)
    plot = report.plot(Path(plot_dir) / "report.png")
    groups: dict[str, Group] = {}
    for result in (r for row in report.rows for r in row.results.values()):  # the table's row order: baseline first
        label = f"{result.model} / {result.title}"
        group = groups.setdefault(label, Group(label, [], result.run.items(), {}))
        group.configurations.append(result.row)
        group.cells[result.row] = _cells(result)
    return ResultsView(report, plot, groups)


def _cells(result: RunResult) -> dict[str, Cell]:
    """Per item: the prediction (or its error) and the judgment made for exactly this prediction, read as the
    report's metrics read it."""
    verdicts = result.metrics.items if result.metrics else {}
    return {
        item_id: Cell(record.get("pred"), record.get("error"), verdicts.get(item_id), item_id in result.replies)
        for item_id, record in result.predictions.items()
    }
