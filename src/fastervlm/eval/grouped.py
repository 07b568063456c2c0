"""Answer a benchmark's items video by video, for one or several configurations at once, in batches.

A video's questions share everything before the prompt: the video is decoded and preprocessed once (on a prefetch
thread, from the on-disk frame cache when one is given), the vision tower runs once with every input any
configuration reads (`Pipeline.encode`), each configuration selects and projects once (`Pipeline.prepare`: a
vision-stage method reuses its selection for every question; an LLM-stage method such as FastV reuses the decode and
the tower), and the questions then wait in their configuration's queue until `batch_size` of them (from this video
or the next ones) are answered by one `generate` call. A video's tokens are dropped once they are prepared; its
kept tokens (with the prompt prefix the LLM computed for them) live only while its questions are queued.

Crash safety: every record of a batch is written (flushed and fsynced) as soon as the batch ends, so a killed run
loses at most the batches in flight, and a resumed run skips every item already written. Greedy answers do not
depend on the sharing. In fp32 a batch changes the logits in the last bits (docs/evaluation.md, "What batching
changes"), which flips a greedy answer only at a near-tie (tests/test_eval_grouped*.py hold the tiny models' records
equal to one item at a time), so a run records its batch size and keeps it; in fp16/bf16 a padded batch flips more,
so the default batch size there is 1 (`default_batch_size`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import Item, LoadedBenchmark, video_path
from fastervlm.eval.rundir import RunDir
from fastervlm.eval.storage import JsonlAppender

CUDA_BATCH_SIZE = 8
"""Items per `generate` call on a GPU in fp32, where a batch costs little more than one item (docs/evaluation.md)."""
CPU_BATCH_SIZE = 8
"""Items per `generate` call on the CPU: the fastest of 1, 2, 4 and 8 measured with each video's prefix shared, on
the tiny checkpoint and on a 7B-geometry model with few layers, with no answer changed (docs/evaluation.md)."""
HALF_PRECISION_BATCH_SIZE = 1
"""In fp16/bf16 a left-padded batch sums attention in another order than one item alone, which flips some greedy
answers (measured on an H200: 3 of 64 in fp16, 12 of 64 in bf16); one at a time keeps every prediction identical
to answering the item alone. --batch-size N trades that for speed."""


ENGINE_BATCH_SIZE = 256
"""Items per submission to a serving engine (the vLLM backend), which batches them across videos and questions
itself: large enough to keep it busy, small enough that a crash loses little (records are written per submission)."""


def default_batch_size(device: Any, dtype: Any = None, backend: str = "transformers") -> int:
    """The batch size `eval predict` uses unless told: ENGINE_BATCH_SIZE for a serving engine; one item at a time in
    half precision (identical predictions), else CPU_BATCH_SIZE on the CPU and CUDA_BATCH_SIZE on a GPU."""
    if backend != "transformers":
        return ENGINE_BATCH_SIZE
    if str(dtype).removeprefix("torch.") in ("float16", "bfloat16"):
        return HALF_PRECISION_BATCH_SIZE
    return CPU_BATCH_SIZE if str(device).split(":")[0] == "cpu" else CUDA_BATCH_SIZE


@dataclass
class VideoGroup:
    """The items (in benchmark order) that ask about one video."""

    video: str
    items: list[Item]


def group_by_video(items: Sequence[Item]) -> list[VideoGroup]:
    """Items grouped by their video, videos in the order of their first item."""
    groups: dict[str, VideoGroup] = {}
    for item in items:
        groups.setdefault(item.video_name, VideoGroup(item.video_name, [])).items.append(item)
    return list(groups.values())


def shard_by_video(items: Sequence[Item], rank: int, world: int) -> list[Item]:
    """Rank `rank`'s items: every question of videos rank, rank + world, ... (in the order of their first item), so
    that a video is decoded and encoded on one rank only. Decided from the whole benchmark, never from what is left,
    so a resumed run (or a larger --limit) gives a video to the same rank."""
    mine = {group.video for group in group_by_video(items)[rank::world]}
    return [item for item in items if item.video_name in mine]


@dataclass
class Configuration:
    """One configuration being predicted in this pass: its run, its method, its items left, its tallies."""

    run: RunDir
    pruner: Any
    todo: set[str]
    out: JsonlAppender | None = None
    queue: list[tuple[Item, Path, Any, dict[str, float]]] = field(default_factory=list)
    """(item, video file, its KeptTokens, its share of the shared stages) waiting for a batch."""
    done: int = 0
    errors: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    batches: int = 0


@dataclass
class Shared:
    """Work done once for every configuration of a pass: decoding, waiting for it, the tower."""

    stage_seconds: dict[str, float] = field(default_factory=dict)
    tower_runs: int = 0


def add_seconds(into: dict[str, float], seconds: dict[str, float], scale: float = 1.0) -> None:
    for stage, value in seconds.items():
        into[stage] = into.get(stage, 0.0) + value * scale


def prefetched(groups: Sequence[Any], load: Callable[[Any], Any], depth: int) -> Iterator[tuple[Any, Future]]:
    """(group, future of load(group)) in order, with at most `depth` loads running ahead of the consumer on one
    thread (decoding overlaps with the model); depth 0 loads inline."""
    if depth < 1:
        for group in groups:
            future: Future = Future()
            try:
                future.set_result(load(group))
            except Exception as err:  # noqa: BLE001  (handed to the consumer, which decides)
                future.set_exception(err)
            yield group, future
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastervlm-decode")
    queue: deque[tuple[Any, Future]] = deque()
    try:
        for group in groups:
            queue.append((group, pool.submit(load, group)))
            if len(queue) > depth:
                yield queue.popleft()
        while queue:
            yield queue.popleft()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class GroupedPredictor:
    """One pass over a shard's videos for every configuration in `configs` (each with its appender open)."""

    pipeline: Any
    loaded: LoadedBenchmark
    data_root: Path
    configs: list[Configuration]
    generation: Any
    batch_size: int
    rank: int = 0
    flip: bool = False
    frame_cache: Any = None
    shared: Shared = field(default_factory=Shared)
    on_record: Callable[[bool], None] = lambda error: None

    def run(self, items: Sequence[Item], prefetch: int) -> None:
        """Answer every item some configuration still needs, video by video; flush the queues at the end."""
        groups = group_by_video([item for item in items if any(item.id in c.todo for c in self.configs)])
        for group, future in prefetched(groups, self._load, prefetch):
            waited = time.perf_counter()
            try:
                path, frames = future.result()
            except FasterVLMError as err:
                self._fail(group.items, self.configs, err)
                continue
            finally:
                add_seconds(self.shared.stage_seconds, {"decode_wait": time.perf_counter() - waited})
            self._video(group, path, frames)
        for config in self.configs:
            self._flush(config)

    def _load(self, group: VideoGroup) -> tuple[Path, Any]:
        benchmark = self.loaded.benchmark
        path = video_path(benchmark, self.data_root, group.items[0])
        if path is None:
            raise FasterVLMError(f"no video {benchmark.video_stem(group.video)}.* in {benchmark.videos(self.data_root)}")
        return path, self.pipeline.frames(video=path, flip=self.flip, cache=self.frame_cache)

    def _video(self, group: VideoGroup, path: Path, frames: Any) -> None:
        """Encode the video once, prepare it once per configuration, queue its questions."""
        wanted = [(c, [item for item in group.items if item.id in c.todo]) for c in self.configs]
        wanted = [(config, items) for config, items in wanted if items]
        try:
            tokens = self.pipeline.encode(frames, [config.pruner for config, _ in wanted])
        except FasterVLMError as err:
            self._fail(group.items, [config for config, _ in wanted], err)
            return
        self.shared.tower_runs += 1
        add_seconds(self.shared.stage_seconds, tokens.seconds)
        users = sum(len(items) for _, items in wanted)
        for config, items in wanted:
            try:
                kept = self.pipeline.prepare(tokens, config.pruner)
            except FasterVLMError as err:
                self._fail(items, [config], err)
                continue
            add_seconds(config.stage_seconds, kept.seconds)
            share = {stage: s / users for stage, s in tokens.seconds.items()}
            add_seconds(share, kept.seconds, 1 / len(items))
            for item in items:
                config.queue.append((item, path, kept, share))
                if len(config.queue) >= self.batch_size:
                    self._flush(config)

    def _flush(self, config: Configuration) -> None:
        batch, config.queue = config.queue, []
        if batch:
            self._answer(config, batch)

    def _answer(self, config: Configuration, batch: list[tuple[Item, Path, Any, dict[str, float]]]) -> None:
        """One generate call for the batch, its records written together; an item that fails alone (a prompt too
        long) becomes an error record and the rest are answered without it."""
        try:
            answers = self.pipeline.ask([p for _, _, p, _ in batch], [i.question for i, _, _, _ in batch],
                                                    config.pruner, self.generation)
        except FasterVLMError as err:
            culprit = getattr(err, "sample", None)
            if culprit is None and len(batch) > 1:  # find which item it is: one at a time
                for entry in batch:
                    self._answer(config, [entry])
                return
            failed = batch[culprit or 0]
            self._fail([failed[0]], [config], err)
            rest = [entry for entry in batch if entry is not failed]
            if rest:
                self._answer(config, rest)
            return
        config.batches += 1
        records = [answer_record(item, path, answer, share, self.rank)
                   for (item, path, _, share), answer in zip(batch, answers)]
        for answer in answers:
            add_seconds(config.stage_seconds, answer.timings)
        config.out.write_many(records)
        config.done += len(records)
        for _ in records:
            self.on_record(False)

    def _fail(self, items: Sequence[Item], configs: Sequence[Configuration], err: FasterVLMError) -> None:
        for config in configs:
            records = [error_record(item, err, self.rank) for item in items if item.id in config.todo]
            if not records:
                continue
            config.out.write_many(records)
            config.errors += len(records)
            for _ in records:
                self.on_record(True)


def _base(item: Item) -> dict[str, Any]:
    return {"id": item.id, "video": item.video_name, "question": item.question, "answer": item.answer}


def error_record(item: Item, err: FasterVLMError, rank: int) -> dict[str, Any]:
    """The record of an item that could not be answered (a missing video, a prompt too long, ...)."""
    return {**_base(item), "pred": None, "error": str(err), "rank": rank}


def answer_record(item: Item, path: Path, answer: Any, share: dict[str, float], rank: int) -> dict[str, Any]:
    """One answered item. `timings`: its share of every stage, shared ones (decoding, the tower, selection) divided
    among the items that shared them, so that they sum over a run to its wall seconds per stage."""
    timings = dict(share)
    add_seconds(timings, answer.timings)
    return {
        **_base(item),
        "video_file": path.name,
        "pred": answer.text,
        "visual_tokens": answer.visual_tokens,
        "prompt_tokens": answer.prompt_tokens,
        "output_tokens": len(answer.output_ids),
        "output_ids": answer.output_ids,
        "tokens_per_frame": answer.tokens_per_frame,
        "llm_prefill_flops": answer.llm_prefill_flops,
        "prefix_tokens": answer.prefix_tokens,
        "computed_prefill_flops": answer.computed_prefill_flops,
        "frame_indices": answer.frame_indices,
        "timings": timings,
        "method": answer.method,
        "rank": rank,
    }
