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

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError

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


def _temp_json(path: Path, data: Any) -> str:
    """`data` as JSON in a fsynced temporary file beside `path`; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(data, tmp, indent=2, ensure_ascii=False)
        tmp.write("\n")
        tmp.flush()
        os.fsync(tmp.fileno())
    return tmp.name


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    os.replace(_temp_json(path, data), path)


def _create_json_once(path: Path, data: Any) -> bool:
    """Create `path` with `data` unless it exists (atomically, across processes and ranks); True if created."""
    tmp = _temp_json(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


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


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a JSONL file; a torn last line (a killed writer) is skipped."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return  # torn final line: the writer was killed mid-write
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise FasterVLMError(
                    f"{path} line {number} is not JSON ({err}): the file was edited or damaged. Repair or delete that "
                    "line and run the command again (a deleted prediction is made again, a deleted judgment is "
                    "judged again, from the judge cache when it holds it)."
                ) from err


class JsonlAppender:
    """Append records to a JSONL file, one line each, flushed and fsynced before `write` returns.

    Holds an exclusive lock so that two processes never write the same file, and cuts a torn last line
    (left by a killed writer) before appending.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise FasterVLMError(
                f"{path} is being written by another process: wait for it to finish, or stop it, before resuming."
            ) from None
        self._cut_torn_line()

    def _cut_torn_line(self) -> None:
        size = self._file.seek(0, os.SEEK_END)
        if size == 0:
            return
        self._file.seek(0)
        data = self._file.read()
        if data.endswith(b"\n"):
            return
        self._file.truncate(data.rfind(b"\n") + 1)
        self._file.seek(0, os.SEEK_END)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()  # closing releases the lock

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        """Record the configuration (True) or check it equals the recorded one; a difference is refused."""
        _create_json_once(self.path / ITEMS_FILE, items)
        created = _create_json_once(self.config_file, config)
        if not created:
            diffs = config_differences(self.config(), config)
            if diffs:
                raise FasterVLMError(
                    f"{self.path} holds a run with another configuration:\n  " + "\n  ".join(diffs)
                    + "\nResuming would mix the two. Use another --out, --tag or --run-dir, or delete the directory."
                )
        return created

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
            found.append(json.loads(settings.read_text())["judge_model"])
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
