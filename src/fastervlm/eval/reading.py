"""One run directory read through one judge model in one metrics mode: its predictions, the judgments that
belong to them (same question, answer and prediction text, same judge), and the metrics those give.

A judgment counts only if it was made for the prediction that is in the run now: stale results are never
counted (the original aggregated every file of its output folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastervlm.eval.judge import judgment_matches, read_judge_settings, read_judgments
from fastervlm.eval.metrics import Metrics, Mode, PairedTest, compute_judgments
from fastervlm.eval.rundir import PROVENANCE, RunDir, is_error, variant_name


@dataclass
class RunResult:
    """One run directory read through one judge model in one metrics mode."""

    run: RunDir
    model: str
    benchmark: str
    title: str
    row: str
    """The run's folder name (method, budget, tag): one table row per model and row."""
    variant: str
    """The method configuration without the budget: one line per model and variant in the plot."""
    settings: dict[str, Any]
    items: int
    predictions: dict[str, dict[str, Any]] = field(repr=False)
    """Every prediction record by id, error records included (RunDir.predictions)."""
    replies: dict[str, list[str | None]] = field(repr=False)
    """The judge's replies (every attempt's) by id, for the predictions now in the run only (current_replies)."""
    visual_tokens: float | None
    metrics: Metrics | None
    """None when the run has no judgments from the chosen judge."""
    baseline_test: PairedTest | None = None
    llm_prefill_flops: float | None = None
    """Mean analytic LLM prefill FLOPs of the answered items (records that carry them; docs/flops.md)."""
    computed_prefill_flops: float | None = None
    """Mean LLM prefill FLOPs the run actually computed per answered item (a shared prompt prefix counted once per
    video; records that carry them)."""

    @property
    def errors(self) -> int:
        return sum(is_error(p) for p in self.predictions.values())

    @property
    def predicted(self) -> int:
        """Items with a prediction (error records not counted)."""
        return len(self.predictions) - self.errors

    @property
    def missing_predictions(self) -> int:
        return self.items - self.predicted - self.errors

    @property
    def unjudged(self) -> int:
        return self.predicted - (self.metrics.judged if self.metrics else 0)

    @property
    def complete(self) -> bool:
        return self.errors == 0 and self.missing_predictions == 0 and self.unjudged == 0

    @property
    def is_baseline(self) -> bool:
        """The run keeps every visual token (the registry decides: the baseline method, or no budget)."""
        from fastervlm.methods import is_baseline

        return is_baseline(self.settings)

    def problems(self) -> list[str]:
        out = []
        if self.errors:
            out.append(f"{self.errors} prediction errors (e.g. missing or undecodable videos)")
        if self.missing_predictions:
            out.append(f"{self.missing_predictions} items not predicted yet")
        if self.metrics is None:
            out.append("not judged")
        elif self.unjudged:
            out.append(f"{self.unjudged} predictions unjudged (left out, not scored as wrong)")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run.path),
            "model": self.model,
            "benchmark": self.benchmark,
            "row": self.row,
            "settings": self.settings,
            "items": self.items,
            "predicted": self.predicted,
            "errors": self.errors,
            "missing_predictions": self.missing_predictions,
            "unjudged": self.unjudged,
            "visual_tokens": self.visual_tokens,
            "llm_prefill_flops": self.llm_prefill_flops,
            "computed_prefill_flops": self.computed_prefill_flops,
            "metrics": self.metrics.to_json() if self.metrics else None,
            "vs_baseline": self.baseline_test.to_json() if self.baseline_test else None,
        }


def judged_models(run: RunDir) -> list[str]:
    """Judge models that gave at least one reply in `run`: a judge run that failed on every item without an
    answer (e.g. an unreachable endpoint) leaves a judge/<model>/ folder but judged nothing, so it does not count.
    (A judge whose replies were all unusable in strict counts: compat may read them, and strict lists them.)"""
    return [m for m in run.judge_models() if any(j.get("valid", True) or _replies_of(j) for j in read_judgments(run, m).values())]


def judge_models_of(runs: list[RunDir]) -> list[str]:
    return sorted({m for run in runs for m in judged_models(run)})


def _replies_of(judgment: dict[str, Any]) -> list[str | None]:
    """Every reply of a judgment in attempt order (judgments made before the list was kept: the last one)."""
    if "replies" in judgment:
        return list(judgment["replies"])
    return [judgment["reply"]] if judgment.get("reply") is not None else []


def current_replies(run: RunDir, judge_model: str | None, predictions: dict[str, dict]) -> dict[str, list[str | None]]:
    """The judge's replies by id, only for judgments made for the prediction now in the run (same question,
    answer and prediction text); empty when the run was not judged with `judge_model`."""
    settings = None if judge_model is None else read_judge_settings(run, judge_model)
    if settings is None:
        return {}
    judgments = read_judgments(run, judge_model)
    return {
        i: _replies_of(judgments[i])
        for i, p in predictions.items()
        if i in judgments and judgment_matches(judgments[i], p, settings, judge_model)
    }


def _mean_of(records: Any, name: str) -> float | None:
    """The mean of a numeric record field over the records that have it (older runs may lack it)."""
    values = [r[name] for r in records if r.get(name) is not None]
    return sum(values) / len(values) if values else None


def read_run(run: RunDir, judge_model: str | None, mode: Mode) -> RunResult:
    """Predictions, errors and (when judge_model is given) metrics of one run; a judgment counts only when it
    was made for the prediction now in the run (same question, answer and prediction text)."""
    config = run.config()
    predictions = run.predictions()
    good = {i: p for i, p in predictions.items() if not is_error(p)}
    judged = judge_model is not None and read_judge_settings(run, judge_model) is not None
    replies = current_replies(run, judge_model, good)
    bench = config["benchmark"]
    return RunResult(
        run=run,
        model=config["model"]["name"],
        benchmark=bench["name"],
        title=bench.get("title") or bench["name"],
        row=run.path.name,
        variant=variant_name(config["method"], config.get(PROVENANCE, {}).get("tag")),
        settings=config["method"],
        items=bench["items"],
        predictions=predictions,
        replies=replies,
        visual_tokens=_mean_of(good.values(), "visual_tokens"),
        metrics=compute_judgments(replies, mode) if judged else None,
        llm_prefill_flops=_mean_of(good.values(), "llm_prefill_flops"),
        computed_prefill_flops=_mean_of(good.values(), "computed_prefill_flops"),
    )
