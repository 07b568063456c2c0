"""Helpers for the eval tests: run directories with hand-written predictions, a model-free stand-in for the
Pipeline, benchmark folders with stand-in videos."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
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


@dataclass
class FakeGeneration:
    """Stands in for GenerationSettings (a dataclass, as run configs record it)."""

    max_new_tokens: int = 8


@dataclass
class FakePruner:
    method: str = "none"
    reduction: float | None = None

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "keep": None, "reduction": self.reduction}


class FakePipeline:
    """The Pipeline methods predict uses, without a model: the answer names the question and the video file,
    a video whose bytes are b"bad" fails to decode. `delay` seconds per answer (for kill tests)."""

    num_frames = 2

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.path = root / "fake-model"
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text('{"model_type": "fake"}')
        self.adapter = SimpleNamespace(dtype="float32", device="cpu")
        self.delay = delay
        self.answered: list[str] = []

    def pruner(self, method: str | None = None, **settings: Any) -> FakePruner:
        return FakePruner(method or "none", **settings)

    def frames(self, video: Path | None = None, *, flip: bool = False) -> SimpleNamespace:
        from fastervlm.errors import MediaError

        if Path(video).read_bytes() == b"bad":
            raise MediaError(f"cannot decode {video}")
        return SimpleNamespace(video=Path(video), frame_indices=[0, 1], flip=flip)

    def answer_frames(self, frames: list, questions: list[str], pruner: FakePruner, generation: Any = None) -> list:
        time.sleep(self.delay)
        self.answered += questions
        tokens = 16 if pruner.reduction is None else 4
        return [
            SimpleNamespace(text=f"{q} -> {f.video.stem}", visual_tokens=tokens, prompt_tokens=tokens + 10,
                            output_ids=[1, 2, 3], frame_indices=f.frame_indices, timings={"llm": 0.0},
                            method=pruner.settings())
            for f, q in zip(frames, questions)
        ]


def write_benchmark(data_root: Path, ids: list[str], folder: str = "MSVD_Zero_Shot_QA", video_dir: str = "videos",
                    prefix: str = "", missing: tuple[str, ...] = (), bad: tuple[str, ...] = ()) -> None:
    """A benchmark folder with one tiny stand-in video file per item (none for `missing`, b"bad" for `bad`)."""
    root = data_root / folder
    (root / video_dir).mkdir(parents=True, exist_ok=True)
    qs = [{"video_name": f"vid_{i}", "question": f"what happens in {i}?", "question_id": i} for i in ids]
    ans = [{"answer": f"answer {i}", "type": 3, "question_id": i} for i in ids]
    (root / "test_q_1k.json").write_text(json.dumps(qs))
    (root / "test_a_1k.json").write_text(json.dumps(ans))
    for i in ids:
        if i not in missing:
            (root / video_dir / f"{prefix}vid_{i}.mp4").write_bytes(b"bad" if i in bad else b"ok")
