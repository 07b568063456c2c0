"""Answer every item of a benchmark with one model and one method configuration, resumably and sharded.

Each finished item is one JSON line in the rank's prediction file, written before the next item starts, so a
killed run loses at most the item in flight and re-running the same command continues where it stopped. Under
torchrun (WORLD_SIZE > 1) rank r takes items r, r + W, r + 2W, ... of the benchmark; the merged files equal a
single-process run because every item's record depends only on the item.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import Item, LoadedBenchmark, benchmark_record, video_path
from fastervlm.eval.rundir import PROVENANCE, RunDir, is_error, run_name
from fastervlm.eval.storage import JsonlAppender

DISTRIBUTED_TIMEOUT = timedelta(days=7)
"""Ranks that finish their shard early wait at the final barrier; the default 30 minutes is too short."""


@dataclass
class PredictSummary:
    """What one predict call did on this rank, and (rank 0, after all ranks finished) the merged state."""

    run_dir: Path
    shard_items: int
    skipped: int
    done: int
    errors: int
    seconds: float
    merged_predictions: int | None = None
    merged_errors: int | None = None
    expected: int | None = None

    def line(self) -> str:
        text = (
            f"{self.run_dir}: {self.done} answered, {self.errors} errors, {self.skipped} already done "
            f"(of {self.shard_items} in this shard) in {self.seconds:.1f}s"
        )
        if self.expected is not None:
            text += f"; run total {self.merged_predictions}/{self.expected} answered, {self.merged_errors} errors"
        return text


@dataclass
class Rank:
    rank: int = 0
    world: int = 1

    def shard(self, items: list[Item]) -> list[Item]:
        return items[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


@contextmanager
def distributed() -> Iterator[Rank]:
    """This process's rank: a torch.distributed group (nccl on GPU, gloo on CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Rank()
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend, timeout=DISTRIBUTED_TIMEOUT)
    try:
        yield Rank(dist.get_rank(), dist.get_world_size())
    finally:
        if owned:
            dist.destroy_process_group()


def rank_device(device: str | None) -> str | None:
    """Under torchrun on GPUs each rank uses its own card (LOCAL_RANK) unless --device says otherwise."""
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def default_run_dir(out: Path, model_name: str, benchmark_name: str, settings: dict[str, Any], tag: str | None) -> Path:
    """<out>/<model>/<benchmark>/<run name>: the layout `eval report` groups by."""
    return Path(out) / model_name / benchmark_name / run_name(settings, tag)


def model_identity(pipeline: Any) -> dict[str, Any]:
    """The model's name and a digest of its config.json (its path may differ between machines)."""
    path = Path(pipeline.path)
    config = path / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return {"name": path.name, "config_sha256": digest, "dtype": str(pipeline.adapter.dtype).removeprefix("torch.")}


def run_config(
    loaded: LoadedBenchmark, pipeline: Any, method: dict[str, Any], generation: Any, flip: bool, data_root: Path,
    tag: str | None = None,
) -> dict[str, Any]:
    """Everything that decides the predictions (compared on resume) plus a provenance section (not compared)."""
    import fastervlm

    return {
        "format": 1,
        "benchmark": {
            **benchmark_record(loaded.benchmark),
            "items": len(loaded.items),
            "items_sha256": loaded.files["items_sha256"],
        },
        "model": model_identity(pipeline),
        "method": method,
        "generation": asdict(generation),
        "flip": flip,
        PROVENANCE: {
            "model_path": str(Path(pipeline.path).resolve()),
            "device": str(pipeline.adapter.device),
            "data_root": str(Path(data_root).resolve()),
            "questions": loaded.files["questions"],
            "answers": loaded.files["answers"],
            "fastervlm": fastervlm.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tag": tag,
        },
    }


def _prefetched(items: list[Item], load: Callable[[Item], Any], depth: int) -> Iterator[tuple[Item, Future]]:
    """(item, future of load(item)) in order, with at most `depth` loads running ahead of the consumer."""
    if depth < 1:
        for item in items:
            future: Future = Future()
            try:
                future.set_result(load(item))
            except Exception as err:  # noqa: BLE001  (handed to the consumer, which decides)
                future.set_exception(err)
            yield item, future
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastervlm-decode")
    queue: deque[tuple[Item, Future]] = deque()
    remaining = iter(items)
    try:
        for item in remaining:
            queue.append((item, pool.submit(load, item)))
            if len(queue) > depth:
                yield queue.popleft()
        while queue:
            yield queue.popleft()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def predict_items(
    pipeline: Any,
    run: RunDir,
    loaded: LoadedBenchmark,
    data_root: Path,
    pruner: Any,
    generation: Any = None,
    *,
    flip: bool = False,
    rank: Rank | None = None,
    prefetch: int = 2,
    progress: bool = True,
) -> PredictSummary:
    """Answer this rank's unfinished items, appending one record per item to the rank's prediction file.

    A missing or undecodable video (any FasterVLMError for the item) becomes an error record; other
    exceptions are bugs and stop the run (everything written so far stays).
    """
    rank = rank or Rank()
    generation = generation or _default_generation()
    started = time.perf_counter()
    shard = rank.shard(loaded.items)
    finished = run.finished_ids()
    todo = [item for item in shard if item.id not in finished]

    done = errors = 0
    if todo:  # a finished run is resumed without writing anything (its folder may be read-only)
        fix = f"make {run.path} writable (or free some space) to resume it, or copy it to a writable folder."
        with JsonlAppender(run.prediction_file(rank.rank), fix) as out:
            done, errors = _answer_items(pipeline, loaded, data_root, todo, out, pruner, generation, flip=flip,
                                         rank=rank, prefetch=prefetch, progress=progress, run=run)
    summary = PredictSummary(run.path, len(shard), len(shard) - len(todo), done, errors, time.perf_counter() - started)
    rank.barrier()
    if rank.rank == 0:
        merged = run.predictions()
        summary.merged_errors = sum(is_error(r) for r in merged.values())
        summary.merged_predictions = len(merged) - summary.merged_errors
        summary.expected = len(loaded.items)
    return summary


def _answer_items(
    pipeline: Any, loaded: LoadedBenchmark, data_root: Path, todo: list[Item], out: JsonlAppender, pruner: Any,
    generation: Any, *, flip: bool, rank: Rank, prefetch: int, progress: bool, run: RunDir,
) -> tuple[int, int]:
    """Answer `todo` in order, one record per item written before the next starts; (answered, errors)."""
    from tqdm import tqdm

    def load(item: Item) -> Any:
        path = video_path(loaded.benchmark, data_root, item)
        if path is None:
            folder = loaded.benchmark.videos(data_root)
            raise FasterVLMError(f"no video {loaded.benchmark.video_stem(item.video_name)}.* in {folder}")
        return path, pipeline.frames(video=path, flip=flip)

    done = errors = 0
    bar = tqdm(total=len(todo), desc=f"{loaded.benchmark.name} {run.path.name}", unit="item",
               disable=not progress or rank.rank != 0, dynamic_ncols=True)
    with bar:
        for item, future in _prefetched(todo, load, prefetch):
            base = {"id": item.id, "video": item.video_name, "question": item.question, "answer": item.answer}
            try:
                path, frames = future.result()
                answer = pipeline.answer_frames([frames], [item.question], pruner, generation)[0]
            except FasterVLMError as err:
                out.write({**base, "pred": None, "error": str(err), "rank": rank.rank})
                errors += 1
            else:
                out.write({
                    **base,
                    "video_file": path.name,
                    "pred": answer.text,
                    "visual_tokens": answer.visual_tokens,
                    "prompt_tokens": answer.prompt_tokens,
                    "output_tokens": len(answer.output_ids),
                    "frame_indices": answer.frame_indices,
                    "timings": answer.timings,
                    "method": answer.method,
                    "rank": rank.rank,
                })
                done += 1
            bar.update(1)
            bar.set_postfix(errors=errors, refresh=False)
    return done, errors


def _default_generation() -> Any:
    from fastervlm.models.base import GenerationSettings

    return GenerationSettings()


def prepare_run(
    pipeline: Any,
    loaded: LoadedBenchmark,
    data_root: Path,
    pruner: Any,
    generation: Any = None,
    *,
    flip: bool = False,
    out: Path | None = None,
    run_dir: Path | None = None,
    tag: str | None = None,
) -> RunDir:
    """The run directory for this configuration, created or checked against what it already holds."""
    method = pruner.settings()
    generation = generation or _default_generation()
    if run_dir is None:
        if out is None:
            raise FasterVLMError("give --out (a folder for all runs) or --run-dir (this run's folder).")
        run_dir = default_run_dir(out, Path(pipeline.path).name, loaded.benchmark.name, method, tag)
    run = RunDir(run_dir)
    items = [asdict(item) for item in loaded.items]
    run.create_or_check(run_config(loaded, pipeline, method, generation, flip, data_root, tag), items)
    return run
