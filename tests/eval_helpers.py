"""Helpers for the eval tests: run directories with hand-written predictions, a model-free stand-in for the
Pipeline, benchmark folders with stand-in videos."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

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
    flops: list[int] | None = None,
    computed: list[int] | None = None,
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
        for n, (item, (_, pred)) in enumerate(zip(items, answers.values())):
            record = {"id": item["id"], "question": item["question"], "answer": item["answer"], "pred": pred,
                      "visual_tokens": tokens, **({"llm_prefill_flops": flops[n]} if flops else {}),
                      **({"computed_prefill_flops": computed[n]} if computed else {})}
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
    keep: int | None = None

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "keep": self.keep, "reduction": self.reduction}

    def per_frame_budget(self, num_patches: int) -> int:
        from fastervlm.selection import resolve_keep

        return resolve_keep(num_patches, self.keep, self.reduction)


class FakePipeline:
    """The Pipeline methods predict uses, without a model: the answer names the question and the video file,
    a video whose bytes are b"bad" fails to decode, a question containing "too long" fails as a prompt too long
    would (at its place in the batch). `delay` seconds per generate call (for kill tests). It counts what
    predict asks of it: decodes, encodes (tower runs), prepares and the sizes of its batches."""

    num_frames = 2
    num_patches = 16
    llm = SimpleNamespace(name="transformers")

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.path = root / "fake-model"
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text('{"model_type": "fake"}')
        self.adapter = SimpleNamespace(dtype="float32", device="cpu")
        self.delay = delay
        self.answered: list[str] = []
        self.decoded: list[str] = []
        self.encoded: list[str] = []
        self.prepared: list[tuple[str, Any]] = []
        self.batches: list[int] = []

    def pruner(self, method: str | None = None, **settings: Any) -> FakePruner:
        return FakePruner(method or "none", **settings)

    def check_method(self, pruner: FakePruner) -> None:
        pass

    def frames(self, video: Path | None = None, *, flip: bool = False, cache: Any = None) -> SimpleNamespace:
        from fastervlm.errors import MediaError

        if Path(video).read_bytes() == b"bad":
            raise MediaError(f"cannot decode {video}")
        self.decoded.append(Path(video).stem)
        return SimpleNamespace(video=Path(video), frame_indices=[0, 1], flip=flip, decode_seconds=0.0)

    def encode(self, frames: SimpleNamespace, pruners: list) -> SimpleNamespace:
        self.encoded.append(frames.video.stem)
        return SimpleNamespace(frames=frames, seconds={"decode_video": 0.0, "vision_encoder": 0.0})

    def prepare(self, encoding: SimpleNamespace, pruner: FakePruner) -> SimpleNamespace:
        self.prepared.append((encoding.frames.video.stem, pruner.settings()))
        return SimpleNamespace(video=encoding.frames.video, frame_indices=[0, 1], seconds={"selection": 0.0})

    def ask(self, prepared: list, questions: list[str], pruner: FakePruner, generation: Any = None) -> list:
        from fastervlm.errors import PromptTooLongError

        for n, question in enumerate(questions):
            if "too long" in question:
                raise PromptTooLongError(f"the prompt of {question!r} is too long", n)
        time.sleep(self.delay)
        self.batches.append(len(questions))
        self.answered += questions
        tokens = 16 if pruner.reduction is None else 4
        return [
            SimpleNamespace(text=f"{q} -> {p.video.stem}", visual_tokens=tokens, prompt_tokens=tokens + 10,
                            output_ids=[1, 2, 3], frame_indices=p.frame_indices, timings={"llm_prefill": 0.0},
                            method=pruner.settings(), tokens_per_frame=[tokens // 2] * 2, llm_prefill_flops=1000,
                            prefix_tokens=tokens + 5, computed_prefill_flops=400)
            for p, q in zip(prepared, questions)
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


def write_questions(data_root: Path, questions: list[tuple[str, str]], benchmark: str = "msvd") -> Path:
    """The benchmark's question and answer files for (video, question) pairs (ids v_<video>_<n>, answer "a");
    returns its (created) video folder, for the test to fill."""
    from fastervlm.eval.benchmarks import BENCHMARKS

    folder = data_root / BENCHMARKS[benchmark].folder
    (folder / "videos").mkdir(parents=True)
    qs = [{"video_name": v, "question": q, "question_id": f"v_{v}_{n}"} for n, (v, q) in enumerate(questions)]
    (folder / "test_q_1k.json").write_text(json.dumps(qs))
    (folder / "test_a_1k.json").write_text(json.dumps([{"answer": "a", "type": 3, "question_id": q["question_id"]}
                                                       for q in qs]))
    return folder / "videos"


# A handful of made-up items per built-in benchmark, in the real files' schema: test_q entries
# {video_name, question, question_id}, test_a entries {answer, type, question_id}; question ids "v_<video>_<n>";
# several questions per video where the real subsets have them. (video, n, question, answer, type)
SAMPLE_ITEMS: dict[str, list[tuple[str, int, str, str, int]]] = {
    "tgif": [
        ("tumblr_sample0a1b2c3d4_250", 0, "What does the bird do 4 times ?", "flap wings", 3),
        ("tumblr_sample1e5f6g7h8_250", 0, "What does the woman do 2 times ?", "nod head", 3),
        ("tumblr_sample2i9j0k1l2_250", 0, "What does the dog do 3 times ?", "jump", 3),
        ("tumblr_sample3m3n4o5p6_400", 0, "What does the man do 10 or more than 10 times ?", "clap hand", 3),
    ],
    "msvd": [
        ("sAmPle0Xy_Z_12_20", 0, "who is slicing an onion?", "woman", 3),
        ("sAmPle0Xy_Z_12_20", 1, "what is a woman slicing?", "onion", 3),
        ("sAmPle1Qr-w_3_9", 0, "what is a cat playing with?", "ball", 3),
        ("sAmPle1Qr-w_3_9", 1, "who plays with a ball?", "cat", 3),
    ],
    "msrvtt": [
        ("video9901", 0, "what is the video doing?", "cook", 3),
        ("video9901", 1, "who is in the kitchen?", "man", 3),
        ("video9902", 0, "what is a person riding?", "bicycle", 3),
        ("video9903", 0, "what are the people doing?", "dance", 3),
    ],
    "activitynet": [
        ("sAmPle4AbCd", 3, "is the athlete wearing a hat", "no", 3),
        ("sAmPle5EfGh", 2, "what is the person in red doing", "surfing", 7),
        ("sAmPle6IjKl", 10, "is the dog indoors", "yes", 3),
        ("sAmPle5EfGh", 5, "how many people are in the video", "2", 8),
    ],
}


def write_sample_benchmarks(data_root: Path) -> dict[str, list[dict[str, Any]]]:
    """test_q_1k.json + test_a_1k.json for each built-in benchmark under `data_root` (no videos); the question
    entries by benchmark name."""
    from fastervlm.eval.benchmarks import BENCHMARKS

    written = {}
    for name, rows in SAMPLE_ITEMS.items():
        folder = data_root / BENCHMARKS[name].folder
        folder.mkdir(parents=True, exist_ok=True)
        questions = [{"video_name": v, "question": q, "question_id": f"v_{v}_{n}"} for v, n, q, _, _ in rows]
        answers = [{"answer": a, "type": t, "question_id": f"v_{v}_{n}"} for v, n, _, a, t in rows]
        (folder / "test_q_1k.json").write_text(json.dumps(questions))
        (folder / "test_a_1k.json").write_text(json.dumps(answers))
        written[name] = questions
    return written


@contextmanager
def unwritable(path: Path, how: str = "real") -> Iterator[str]:
    """Make `path` and everything below it refuse writes; yields what was done, so a test says what it checked.

    how="real": `chmod -R a-w` when not root; as root (which ignores modes) `chattr -R +i`, a real refusal by the
    kernel (EPERM). Where neither works (no chattr, or a file system without the attribute) this falls back to
    the simulation and says so. how="simulated": the os/io calls that create or change files under `path` raise
    OSError(EROFS), as on a read-only mount (mounting one needs privileges tests do not have).
    """
    path = Path(path).resolve()
    if how == "real" and os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
        try:
            yield "read-only folder (chmod a-w, non-root)"
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
        return
    if how == "real" and shutil.which("chattr") and subprocess.run(["chattr", "-R", "+i", str(path)],
                                                                   capture_output=True).returncode == 0:
        try:
            yield "immutable folder (chattr +i as root)"
        finally:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=True)
        return
    with _simulated_read_only(path):
        yield "simulated read-only file system (EROFS from patched os/io calls)"


@contextmanager
def _simulated_read_only(root: Path) -> Iterator[None]:
    def under(target: Any) -> bool:
        if isinstance(target, int):
            return False  # a file descriptor
        resolved = Path(os.path.abspath(os.fspath(target)))
        return resolved == root or root in resolved.parents

    def refuse(target: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(target))

    def guard(real: Any, *, writes: Any = lambda *a, **k: True) -> Any:
        def call(target: Any, *args: Any, **kwargs: Any) -> Any:
            if under(target) and writes(*args, **kwargs):
                refuse(target)
            return real(target, *args, **kwargs)
        return call

    def guard_both(real: Any) -> Any:  # link/replace/rename: the destination decides
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if under(dst) or under(src):
                refuse(dst)
            return real(src, dst, *args, **kwargs)
        return call

    def open_writes(mode: str = "r", *args: Any, **kwargs: Any) -> bool:
        return any(c in mode for c in "wax+")

    def os_open_writes(flags: int, *args: Any, **kwargs: Any) -> bool:
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))

    with ExitStack() as stack:
        for name in ("mkdir", "unlink", "rmdir"):
            stack.enter_context(mock.patch.object(os, name, guard(getattr(os, name))))
        for name in ("link", "replace", "rename"):
            stack.enter_context(mock.patch.object(os, name, guard_both(getattr(os, name))))
        stack.enter_context(mock.patch.object(os, "open", guard(os.open, writes=os_open_writes)))
        real_open = builtins.open
        stack.enter_context(mock.patch.object(builtins, "open", guard(real_open, writes=open_writes)))
        stack.enter_context(mock.patch.object(io, "open", guard(real_open, writes=open_writes)))
        yield
