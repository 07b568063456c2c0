"""The judgment cache: one small JSON file per judgment, keyed by what identifies the judge and the item.

The key is sha256 of (the endpoint's host[:port], the requested judge model, the prompt version, question, answer,
prediction): everything a command knows before it sends a request, so a rerun after a crash, a kill -9 or a
scheduler's SIGTERM finds every judgment that was paid for, and two servers that both call their model
"gpt-3.5-turbo" never share verdicts. The model name the server reported is kept inside each judgment
(`served_model`): when a live call shows that the server now reports another name (a new snapshot behind the same
name), the cached judgments of the old one are asked again (judge.py). The cache also remembers, per (host,
requested model), the name the server reported last (`endpoints/`).

Older keys stay readable: cache format 2 keyed by the served name instead of the requested one (`served_key`; found
through the remembered served name), and format 1 by (requested model, prompt version, question, answer,
prediction) with no endpoint (`legacy_key`): such shared-cache files cannot say which server made them and are
never used, but a run's own judgments.jsonl of that format stays readable (see judge.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fastervlm.eval.storage import write_json_atomic, writing

KEY_FORMAT = "judge-key-3"
SERVED_KEY_FORMAT = "judge-key-2"


def judgment_key(host: str, model: str, prompt_version: str, question: str, answer: str, pred: str) -> str:
    """The cache key of one judgment by the judge `model` (the requested name) at `host` (see the module doc)."""
    fields = [KEY_FORMAT, host, model, prompt_version, question, answer, pred]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def served_key(host: str, served_model: str, prompt_version: str, question: str, answer: str, pred: str) -> str:
    """The format-2 key (by the model name the server reported): how judgments cached before format 3 are found."""
    fields = [SERVED_KEY_FORMAT, host, served_model, prompt_version, question, answer, pred]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def legacy_key(model: str, prompt_version: str, question: str, answer: str, pred: str) -> str:
    """The format-1 key (no endpoint, the requested model name): how judgments made before it are recognised."""
    return hashlib.sha256(json.dumps([model, prompt_version, question, answer, pred]).encode()).hexdigest()


def default_cache_dir() -> Path:
    """<fastervlm cache>/judge: $FASTERVLM_CACHE/judge or ~/.cache/fastervlm/judge."""
    from fastervlm.tiny import default_cache_dir as fastervlm_cache

    return fastervlm_cache() / "judge"


class JudgeCache:
    """Judgments by key, one small file each, written atomically (safe across processes)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fix = f"pass --judge-cache a writable folder (or set FASTERVLM_CACHE), or make {self.root} writable."

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _endpoint_path(self, host: str, requested_model: str) -> Path:
        name = hashlib.sha256(json.dumps([host, requested_model]).encode()).hexdigest()
        return self.root / "endpoints" / f"{name}.json"

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            value = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def get(self, key: str) -> dict[str, Any] | None:
        return self._read(self._path(key))

    def put(self, key: str, record: dict[str, Any]) -> None:
        with writing(self.root, self._fix):
            write_json_atomic(self._path(key), record)

    def served_model(self, host: str, requested_model: str) -> str | None:
        """The model name the server at `host` reported last for `requested_model`, if it ever answered."""
        found = self._read(self._endpoint_path(host, requested_model))
        served = (found or {}).get("served_model")
        return served if isinstance(served, str) and served else None

    def remember_served(self, host: str, requested_model: str, served_model: str) -> None:
        record = {"host": host, "requested_model": requested_model, "served_model": served_model}
        with writing(self.root, self._fix):
            write_json_atomic(self._endpoint_path(host, requested_model), record)

    def check_writable(self) -> None:
        """Fail now, before any paid call, when the cache folder cannot be written."""
        with writing(self.root, self._fix):
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
