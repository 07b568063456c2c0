"""The run directory: one configuration, its items, per-rank prediction files and the judge's results.

Layout (documented for users in docs/evaluation.md; `eval judge`, `eval report` and the web page read it):

    <run>/config.json                      what produced the predictions; resuming with another one is refused
    <run>/items.json                       the benchmark items in order: id, video_name, question, answer
    <run>/predictions/rank-00000.jsonl     one JSON line per item, appended + fsynced as each item finishes
    <run>/judge/<judge-model>/judge.json   the judge's settings (never the API key)
    <run>/judge/<judge-model>/judgments.jsonl   one line per judged item

Prediction files are append-only. A killed process loses at most the line it was writing: a torn last line is cut
off before the next append. Reading merges every rank's file: per id a success wins over an error record, and the
later line wins among equals, so re-running an errored item replaces its error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.storage import JsonlAppender, create_json_once, read_jsonl, write_json_atomic, writing

__all__ = ["JsonlAppender", "RunDir", "find_runs", "find_runs_under", "is_error", "read_jsonl", "run_name",
           "variant_name", "write_json_atomic"]

CONFIG_FILE = "config.json"
ITEMS_FILE = "items.json"
PREDICTIONS_DIR = "predictions"
JUDGE_DIR = "judge"
PROVENANCE = "provenance"
"""The config section that describes where and how a run was made but does not decide its results (not compared)."""


def variant_name(settings: dict[str, Any], tag: str | None = None) -> str:
    """A method configuration without its budget: the method, its other set options, the tag
    (fastervlm, fastervlm_global_budget, fastv_layer2, none_mytag). One line per variant in the plot."""
    parts = [str(settings["method"])]
    for key, value in settings.items():
        if key in ("method", "keep", "reduction") or value is None or value is False:
            continue
        parts.append(key if value is True else f"{key}{value}")
    return "_".join(parts + ([tag] if tag else []))


def run_name(settings: dict[str, Any], tag: str | None = None) -> str:
    """A run's folder name: the variant's parts with the budget after the options (fastervlm_r0.9,
    fastervlm_global_budget_k26, none, fastervlm_r0.9_mytag)."""
    budget = []
    if settings.get("reduction") is not None:
        budget.append(f"r{settings['reduction']:g}")
    if settings.get("keep") is not None:
        budget.append(f"k{settings['keep']}")
    untagged = variant_name(settings)
    return "_".join([untagged, *budget] + ([tag] if tag else []))


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring the provenance section."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key == PROVENANCE:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} in the run directory, {b!r} now")
    return diffs


BATCH_SIZE = "batch_size"
"""The config field with the items per generate call: recorded and checked when predicting (predict.keep_batch_size)."""


def _without_items(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the item count and digest (the items themselves are compared, and may grow, apart) and
    without the batch size (checked when predicting)."""
    benchmark = {k: v for k, v in config.get("benchmark", {}).items() if k not in ("items", "items_sha256")}
    return {**{k: v for k, v in config.items() if k != BATCH_SIZE}, "benchmark": benchmark}


def _item_text(items: list[dict[str, Any]], n: int) -> str:
    return f"id {items[n].get('id')!r}" if n < len(items) else "absent"


def is_error(record: dict[str, Any]) -> bool:
    return record.get("error") is not None


class RunDir:
    """One (model, benchmark, method configuration) run."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    def exists(self) -> bool:
        return self.config_file.is_file()

    def config(self) -> dict[str, Any]:
        if not self.exists():
            raise FasterVLMError(f"{self.path} is not a run directory (no {CONFIG_FILE}); run `fastervlm eval predict` first.")
        return self._read_record(self.config_file)

    def items(self) -> list[dict[str, Any]]:
        """The benchmark items in order (id, video_name, question, answer)."""
        return self._read_record(self.path / ITEMS_FILE)

    def _read_record(self, path: Path) -> Any:
        """One of the run's own JSON records, with an error that says what to do when it is missing or damaged."""
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise FasterVLMError(
                f"{path} is missing or damaged ({err}); the predictions in {self.path} are intact, but this record "
                "cannot be rebuilt safely: restore it from a backup, or start a fresh run with another --out or --tag."
            ) from err

    def create_or_check(self, config: dict[str, Any], items: list[dict[str, Any]]) -> bool:
        """Record the configuration (True), or check it against the recorded one (False): a different
        configuration is refused, more items than recorded grow the run (`grow`), fewer or other items are refused.
        Nothing is written when the run folder already holds exactly this (a read-only folder can be resumed)."""
        if not self.exists():
            existing = next(p for p in (self.path, *self.path.parents) if p.exists())
            fix = f"choose a writable --out (or --run-dir), or make {existing} writable."
            with writing(self.path, fix):
                create_json_once(self.path / ITEMS_FILE, items)
                if create_json_once(self.config_file, config):
                    if self.items() != items:  # left by a run that died before writing its config
                        write_json_atomic(self.path / ITEMS_FILE, items)
                    return True
        recorded = self.config()
        diffs = config_differences(_without_items(recorded), _without_items(config))
        if diffs:
            raise FasterVLMError(
                f"{self.path} holds a run with another configuration:\n  " + "\n  ".join(diffs)
                + "\nResuming would mix the two. Use another --out, --tag or --run-dir, or delete the directory."
            )
        if self.items() != items:
            with writing(self.path, f"make {self.path} writable to add the new items, or use another --out or --tag."):
                self.grow(recorded, config, items)
        return False

    def grow(self, recorded: dict[str, Any], config: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Extend the run to `items` when its recorded items are their first ones (--limit 100, then 1000);
        predictions made so far stay and count. Fewer items, or other ones, are refused."""
        old = self.items()
        if len(items) > len(old) and items[: len(old)] == old:
            write_json_atomic(self.path / ITEMS_FILE, items)  # items first: a crash in between leaves a readable run
            kept = {key: recorded[key] for key in (BATCH_SIZE, PROVENANCE) if key in recorded}
            write_json_atomic(self.config_file, {**config, PROVENANCE: {}, **kept})
            return
        if len(items) < len(old) and old[: len(items)] == items:
            raise FasterVLMError(
                f"{self.path} holds a run of {len(old)} items and this command asks for its first {len(items)}: a run "
                f"is never shrunk. Resume it with --limit {len(old)} (or more), or use another --out, --tag or "
                "--run-dir for the smaller run."
            )
        first = next((n for n, (a, b) in enumerate(zip(old, items)) if a != b), min(len(old), len(items)))
        raise FasterVLMError(
            f"{self.path} holds other benchmark items: item {first + 1} is {_item_text(old, first)} in the run "
            f"directory, {_item_text(items, first)} now. Use the question files the run was made from, or another "
            "--out, --tag or --run-dir."
        )

    def prediction_file(self, rank: int) -> Path:
        return self.path / PREDICTIONS_DIR / f"rank-{rank:05d}.jsonl"

    def prediction_files(self) -> list[Path]:
        return sorted((self.path / PREDICTIONS_DIR).glob("rank-*.jsonl"))

    def predictions(self) -> dict[str, dict[str, Any]]:
        """Every rank's records merged by id (in item order): a success beats an error, later beats earlier."""
        merged: dict[str, dict[str, Any]] = {}
        for path in self.prediction_files():
            for record in read_jsonl(path):
                old = merged.get(record["id"])
                if old is None or is_error(old) or not is_error(record):
                    merged[record["id"]] = record
        order = {item["id"]: n for n, item in enumerate(self.items())} if (self.path / ITEMS_FILE).is_file() else {}
        return dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))

    def finished_ids(self) -> set[str]:
        """Ids with a successful prediction: a resumed run skips these (errored items are tried again)."""
        return {i for i, r in self.predictions().items() if not is_error(r)}

    def judge_dir(self, judge_model: str) -> Path:
        return self.path / JUDGE_DIR / judge_model.replace("/", "_")

    def judge_models(self) -> list[str]:
        """Judge models that have results in this run (as recorded in their judge.json)."""
        root = self.path / JUDGE_DIR
        found = []
        for settings in sorted(root.glob("*/judge.json")):
            try:
                found.append(str(json.loads(settings.read_text())["judge_model"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise FasterVLMError(
                    f"{settings} is damaged ({type(err).__name__}: {err}): delete it and run `fastervlm eval judge` on "
                    f"{self.path} again (the judgments it had come back from the judge cache, at no cost).") from err
        return found


def find_runs(root: str | os.PathLike) -> list[RunDir]:
    """Every run directory at or below `root`."""
    root = Path(root)
    if (root / CONFIG_FILE).is_file():
        return [RunDir(root)]
    return [RunDir(p.parent) for p in sorted(root.rglob(CONFIG_FILE)) if (p.parent / ITEMS_FILE).is_file()]


def find_runs_under(paths: list[str | os.PathLike]) -> list[RunDir]:
    """Every run directory under each of `paths`; an error naming the path that holds none."""
    runs = []
    for path in paths:
        found = find_runs(path)
        if not found:
            missing = "" if Path(path).exists() else " (no such folder)"
            raise FasterVLMError(
                f"no run directories under {path}{missing}: run `fastervlm eval predict` first, or pass the folder it wrote."
            )
        runs += found
    return runs
