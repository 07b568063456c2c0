"""Benchmarks as data files, and loading their items.

A benchmark is where its files live under `--data-root` and how a question's video is named on disk: one small
TOML or JSON file. The built-in ones are such files shipped inside the package (`benchmark_defs/`, read in name
order, which is the report's column order); a user's own is the same kind of file passed by path. Adding a
benchmark is adding one file. Questions and answers are matched by `question_id` (the original matched them by
list position).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError

FILE_PAIRS = (("test_q_1k.json", "test_a_1k.json"), ("test_q.json", "test_a.json"))
"""Question/answer files tried in order: the seed's 1K subsets, else the full files (then --limit 1000)."""


@dataclass(frozen=True)
class Benchmark:
    """Where one benchmark's files are, relative to `<data-root>/<folder>` (absolute paths are kept as they are)."""

    name: str
    title: str
    folder: str
    video_dir: str
    video_prefix: str = ""
    """Prepended to `video_name` to get the file stem (ActivityNet: "v_")."""
    file_pairs: tuple[tuple[str, str], ...] = FILE_PAIRS
    extensions: tuple[str, ...] | None = None
    """Video file extensions tried in order; None: fastervlm.media.VIDEO_EXTENSIONS."""

    def root(self, data_root: Path) -> Path:
        return Path(data_root).expanduser() / self.folder

    def files(self, data_root: Path) -> tuple[Path, Path]:
        """The first (questions, answers) pair that exists, with an error that lists what was looked for."""
        root = self.root(data_root)
        for questions, answers in self.file_pairs:
            pair = root / questions, root / answers
            if pair[0].is_file() and pair[1].is_file():
                return pair
        tried = ", ".join(f"{q} + {a}" for q, a in self.file_pairs)
        raise FasterVLMError(
            f"no question/answer files for {self.title} in {root} (looked for {tried}); pass --data-root the folder "
            f"that holds {self.folder}/ (e.g. eval/GPT_Zero_Shot_QA)."
        )

    def videos(self, data_root: Path) -> Path:
        return self.root(data_root) / self.video_dir

    def video_stem(self, video_name: str) -> str:
        return self.video_prefix + video_name


BUILTIN_DIR = "benchmark_defs"
"""The package folder (under fastervlm.eval) that holds the built-in benchmark files."""



@dataclass(frozen=True)
class Item:
    """One question about one video, with its ground-truth answer."""

    id: str
    video_name: str
    question: str
    answer: str


@dataclass
class LoadedBenchmark:
    """A benchmark's items (after --limit) and a fingerprint of the files they came from."""

    benchmark: Benchmark
    items: list[Item]
    files: dict[str, str] = field(default_factory=dict)
    """{"questions": path, "answers": path, "items_sha256": digest of the chosen items}: the same items from the
    1K files or from the full files with --limit 1000 give the same digest."""


def benchmark_from_file(path: Path) -> Benchmark:
    """A benchmark defined by a .toml or .json file (see `benchmark_from_text` for the keys)."""
    if not path.is_file():
        raise FasterVLMError(f"benchmark file {path} does not exist.")
    return benchmark_from_text(path.read_text(), path.suffix, str(path))


def benchmark_from_text(text: str, suffix: str, origin: str) -> Benchmark:
    """A benchmark from the text of a definition file: keys name, folder, video_dir, optional title,
    video_prefix, questions+answers (one file pair) and extensions. `origin` names the file in errors."""
    kind = suffix.lower().lstrip(".")
    try:
        raw = tomllib.loads(text) if kind == "toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise FasterVLMError(f"benchmark file {origin} is not valid {kind.upper()}: {err}") from err
    if not isinstance(raw, dict):
        raise FasterVLMError(f"benchmark file {origin} must hold one table/object with the keys name, folder, video_dir.")
    data = dict(raw)
    if ("questions" in data) != ("answers" in data):
        raise FasterVLMError(f"benchmark file {origin}: give both 'questions' and 'answers', or neither.")
    if "questions" in data:
        data["file_pairs"] = ((str(data.pop("questions")), str(data.pop("answers"))),)
    if "extensions" in data:
        data["extensions"] = tuple(e if e.startswith(".") else f".{e}" for e in data["extensions"])
    data.setdefault("title", data.get("name", ""))
    known = {f.name for f in fields(Benchmark)}
    unknown = sorted(set(data) - known)
    missing = sorted({"name", "folder", "video_dir"} - set(data))
    if unknown or missing:
        problems = ([f"unknown keys {', '.join(unknown)}"] if unknown else []) + (
            [f"missing keys {', '.join(missing)}"] if missing else []
        )
        raise FasterVLMError(
            f"benchmark file {origin}: {'; '.join(problems)}. Allowed: name, title, folder, video_dir, video_prefix, "
            "questions, answers, extensions."
        )
    return Benchmark(**data)


DEFINITION_SUFFIXES = (".toml", ".json")


def _builtin_files() -> list[Traversable]:
    """The packaged definition files in name order (importlib.resources: read from an installed wheel too)."""
    folder = resources.files("fastervlm.eval").joinpath(BUILTIN_DIR)
    files = [f for f in folder.iterdir() if f.is_file() and Path(f.name).suffix in DEFINITION_SUFFIXES]
    return sorted(files, key=lambda f: f.name)


def _load_builtins() -> dict[str, Benchmark]:
    found: dict[str, Benchmark] = {}
    for file in _builtin_files():
        benchmark = benchmark_from_text(file.read_text(encoding="utf-8"), Path(file.name).suffix, f"{BUILTIN_DIR}/{file.name}")
        if benchmark.name in found:
            raise FasterVLMError(f"two packaged benchmark files define {benchmark.name!r}; names must be unique.")
        found[benchmark.name] = benchmark
    return found


BENCHMARKS: dict[str, Benchmark] = _load_builtins()
"""The built-in benchmarks by name, in the order of the seed's table (the files' name order)."""


def benchmark_names() -> list[str]:
    """The built-in benchmarks' names (cheap: no torch; the CLI's help and defaults use it)."""
    return list(BENCHMARKS)


def get_benchmark(spec: str) -> Benchmark:
    """A built-in benchmark by name (case-insensitive, "-qa" allowed) or a user-defined one from a .json/.toml file."""
    key = spec.lower().removesuffix("-qa").replace("-", "")
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    path = Path(spec).expanduser()
    if path.suffix.lower() in DEFINITION_SUFFIXES:
        return benchmark_from_file(path)
    raise FasterVLMError(
        f"unknown benchmark {spec!r}: use one of {', '.join(BENCHMARKS)} or a .json/.toml file that defines one "
        "(see docs/evaluation.md)."
    )


def benchmark_record(benchmark: Benchmark) -> dict[str, Any]:
    """The benchmark definition as plain JSON (for a run's config)."""
    return json.loads(json.dumps(asdict(benchmark)))


TEXT_FIELDS = ("question", "video_name")
"""Fields that must be non-empty text: a null question would be asked as the text "None"."""
ID_TYPES = (str, int)
"""question_id: text or a whole number (the seed's files use both)."""


def _read_list(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FasterVLMError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(data, list):
        raise FasterVLMError(f"{path} must hold a JSON list of objects, found {type(data).__name__}.")
    for position, entry in enumerate(data):
        if not isinstance(entry, dict) or any(k not in entry for k in required):
            raise FasterVLMError(f"{path} entry {position} must be an object with {', '.join(required)}; found {entry!r:.200}.")
        _check_entry(path, position, entry, required)
    return data


def _check_entry(path: Path, position: int, entry: dict[str, Any], required: tuple[str, ...]) -> None:
    """Each required field of the right kind: text fields non-empty text, the id text or a whole number, the
    answer text or a number (never null)."""
    problems = [f"{name} is {json.dumps(entry[name])}, not a non-empty text" for name in TEXT_FIELDS
                if name in required and not (isinstance(entry[name], str) and entry[name].strip())]
    qid = entry["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, ID_TYPES) or qid == "":
        problems.append(f"question_id is {json.dumps(qid)}, not a text or a whole number")
    answer = entry.get("answer", "")
    if "answer" in required and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        problems.append(f"answer is {json.dumps(answer)}, not a text")
    if problems:
        raise FasterVLMError(f"{path} entry {position} (question_id {json.dumps(qid)}): {'; '.join(problems)}. Fix "
                             "or remove that entry (the benchmark's original file has none like it).")


def _by_id(entries: list[dict[str, Any]], path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        qid = str(entry["question_id"])
        if qid in out:
            raise FasterVLMError(f"{path} has question_id {qid!r} twice; question ids must be unique.")
        out[qid] = entry
    return out


def load_items(benchmark: Benchmark, data_root: Path, limit: int | None = None) -> LoadedBenchmark:
    """The first `limit` questions (file order) with their answers, matched by question_id."""
    if limit is not None and limit < 1:
        raise FasterVLMError(f"--limit must be at least 1, got {limit}.")
    q_path, a_path = benchmark.files(data_root)
    questions = _read_list(q_path, ("question_id", "question", "video_name"))
    if not questions:
        raise FasterVLMError(f"no questions in {q_path}: it holds an empty list. Point --data-root at the benchmark's "
                             "real question file (a JSON list of {video_name, question, question_id}).")
    answers = _by_id(_read_list(a_path, ("question_id", "answer")), a_path)
    q_ids = _by_id(questions, q_path)
    unanswered = [qid for qid in q_ids if qid not in answers]
    orphans = [aid for aid in answers if aid not in q_ids]
    if unanswered or orphans:
        detail = []
        if unanswered:
            detail.append(f"{len(unanswered)} questions have no answer (first: {unanswered[0]!r})")
        if orphans:
            detail.append(f"{len(orphans)} answers have no question (first: {orphans[0]!r})")
        raise FasterVLMError(
            f"{q_path.name} and {a_path.name} in {q_path.parent} do not match by question_id: {'; '.join(detail)}. "
            "Use the question and answer files of the same split."
        )
    chosen = questions if limit is None else questions[:limit]
    items = [
        Item(str(q["question_id"]), str(q["video_name"]), str(q["question"]), str(answers[str(q["question_id"])]["answer"]))
        for q in chosen
    ]
    digest = hashlib.sha256(json.dumps([asdict(i) for i in items]).encode()).hexdigest()
    return LoadedBenchmark(benchmark, items, {"questions": str(q_path), "answers": str(a_path), "items_sha256": digest})


def video_path(benchmark: Benchmark, data_root: Path, item: Item) -> Path | None:
    """The item's video file (first existing extension), or None when there is none."""
    from fastervlm import media

    extensions = benchmark.extensions or media.VIDEO_EXTENSIONS
    return media.find_video(benchmark.videos(data_root), benchmark.video_stem(item.video_name), extensions)
