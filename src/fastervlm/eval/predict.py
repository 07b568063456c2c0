"""Answer every item of a benchmark with one model and one or several method configurations, resumably and sharded.

Items are answered video by video and in batches (fastervlm.eval.grouped); each finished item is one JSON line in
the rank's prediction file, written as soon as its batch ends, so a killed run loses at most the batch in flight
and re-running the same command continues where it stopped. Under torchrun (WORLD_SIZE > 1) rank r takes every
question of videos r, r + W, r + 2W, ...; the merged files equal a single-process run because every item's record
depends only on the item.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import Item, LoadedBenchmark, benchmark_record
from fastervlm.eval.grouped import Configuration, GroupedPredictor, add_seconds, default_batch_size, shard_by_video
from fastervlm.eval.rundir import BATCH_SIZE, PROVENANCE, RunDir, is_error, run_name
from fastervlm.eval.storage import JsonlAppender, write_json_atomic, writing

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
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage: decode_video (decode + preprocess, on the prefetch thread), decode_wait (the model
    waiting for it), the engine's stages (vision_encoder, cls_scoring, selection, projector, llm_prefill,
    llm_decode). Work shared by the configurations of one pass is counted on its first configuration only."""
    tower_runs: int = 0
    """Vision-tower runs (one per video of the pass; shared work, counted like stage_seconds)."""
    batches: int = 0
    """`generate` calls this configuration made."""
    configurations: int = 1
    """Configurations predicted together in the pass (`seconds` is the whole pass's)."""

    def line(self) -> str:
        text = (
            f"{self.run_dir}: {self.done} answered, {self.errors} errors, {self.skipped} already done "
            f"(of {self.shard_items} in this shard) in {self.seconds:.1f}s"
        )
        if self.tower_runs:
            text += f", vision tower ran {self.tower_runs} times"
            text += f" for {self.configurations} configurations" if self.configurations > 1 else ""
        if self.expected is not None:
            text += f"; run total {self.merged_predictions}/{self.expected} answered, {self.merged_errors} errors"
        return text


@dataclass
class Rank:
    rank: int = 0
    world: int = 1

    def shard(self, items: Sequence[Item]) -> list[Item]:
        """This rank's items: all the questions of its videos (`grouped.shard_by_video`)."""
        return shard_by_video(items, self.rank, self.world)

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
    """The model's name (`model_name`: a tiny random checkpoint says so), a digest of its config.json (its path may
    differ between machines) and its dtype."""
    from fastervlm.tiny.identity import model_name

    path = Path(pipeline.path)
    config = path / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    return {"name": model_name(path), "config_sha256": digest, "dtype": str(pipeline.adapter.dtype).removeprefix("torch.")}


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
    batch_size: int | None = None,
    frame_cache: Any = None,
) -> PredictSummary:
    """Answer this rank's unfinished items, appending one record per item to the rank's prediction file.

    batch_size: items per generate call (None: `grouped.default_batch_size` for the model's device and dtype). frame_cache:
    a `frame_cache.FrameCache` for the sampled frames, or None to decode every video. A missing or undecodable
    video (any FasterVLMError for the item) becomes an error record; other exceptions are bugs and stop the run
    (everything written so far stays).
    """
    return predict_configurations(pipeline, loaded, data_root, [(run, pruner)], generation, flip=flip, rank=rank,
                                  prefetch=prefetch, progress=progress, batch_size=batch_size,
                                  frame_cache=frame_cache)[0]


def predict_configurations(
    pipeline: Any, loaded: LoadedBenchmark, data_root: Path, configurations: Sequence[tuple[RunDir, Any]],
    generation: Any = None, *, flip: bool = False, rank: Rank | None = None, prefetch: int = 2, progress: bool = True,
    batch_size: int | None = None, frame_cache: Any = None,
) -> list[PredictSummary]:
    """Predict several (run, pruner) configurations of one benchmark in one pass: each video is decoded and encoded
    once for all of them. Each run's records equal those of predicting it alone. One summary per configuration."""
    rank = rank or Rank()
    generation = generation or _default_generation()
    batch_size = _pass_batch_size(pipeline, [run for run, _ in configurations]) if batch_size is None else batch_size
    if batch_size < 1:
        raise FasterVLMError(f"--batch-size is a number of items per generate call: 1 or more (got {batch_size}).")
    for run, _ in configurations:
        keep_batch_size(run, batch_size)
    for _, pruner in configurations:
        pipeline.check_method(pruner)  # a method this model cannot run fails here, not as an error per item
    started = time.perf_counter()
    shard = rank.shard(loaded.items)
    configs = []
    for run, pruner in configurations:
        finished = run.finished_ids()
        configs.append(Configuration(run, pruner, {item.id for item in shard if item.id not in finished}))
    predictor = GroupedPredictor(pipeline, loaded, data_root, configs, generation, batch_size, rank.rank, flip,
                                 frame_cache)
    if any(config.todo for config in configs):  # a finished run is resumed without writing (it may be read-only)
        _run_pass(predictor, shard, prefetch, progress)
    seconds = time.perf_counter() - started
    summaries = [PredictSummary(c.run.path, len(shard), len(shard) - len(c.todo), c.done, c.errors, seconds,
                                stage_seconds=c.stage_seconds, batches=c.batches, configurations=len(configs))
                 for c in configs]
    add_seconds(summaries[0].stage_seconds, predictor.shared.stage_seconds)
    summaries[0].tower_runs = predictor.shared.tower_runs
    rank.barrier()
    if rank.rank == 0:
        for summary, config in zip(summaries, configs):
            merged = config.run.predictions()
            summary.merged_errors = sum(is_error(r) for r in merged.values())
            summary.merged_predictions = len(merged) - summary.merged_errors
            summary.expected = len(loaded.items)
    return summaries


def _run_pass(predictor: GroupedPredictor, shard: list[Item], prefetch: int, progress: bool) -> None:
    """Open the prediction file of every configuration with work left, and answer the shard with a progress bar."""
    from tqdm import tqdm

    configs = predictor.configs
    name = configs[0].run.path.name if len(configs) == 1 else f"{len(configs)} configurations"
    bar = tqdm(total=sum(len(c.todo) for c in configs), desc=f"{predictor.loaded.benchmark.name} {name}",
               unit="item", disable=not progress or predictor.rank != 0, dynamic_ncols=True)
    errors = 0

    def tick(error: bool) -> None:
        nonlocal errors
        errors += error
        bar.update(1)
        bar.set_postfix(errors=errors, refresh=False)

    predictor.on_record = tick
    with bar, ExitStack() as files:
        for config in configs:
            if config.todo:
                fix = (f"make {config.run.path} writable (or free some space) to resume it, or copy it to a "
                       "writable folder.")
                config.out = files.enter_context(JsonlAppender(config.run.prediction_file(predictor.rank), fix))
        predictor.run(shard, prefetch)


def recorded_batch_size(run: RunDir) -> int | None:
    """The batch size a run's config.json records (None: recorded before batch sizes were)."""
    return run.config().get(BATCH_SIZE)


def _pass_batch_size(pipeline: Any, runs: Sequence[RunDir]) -> int:
    """The batch size the runs of a pass recorded (a resumed run keeps its own), else the device's default."""
    recorded = {size for size in map(recorded_batch_size, runs) if size is not None}
    if len(recorded) > 1:
        raise FasterVLMError(f"the runs of this pass were predicted with batch sizes {sorted(recorded)}: resume them "
                             "one at a time.")
    return recorded.pop() if recorded else default_batch_size(pipeline.adapter.device, pipeline.adapter.dtype,
                                                              pipeline.llm.name)


def keep_batch_size(run: RunDir, batch_size: int) -> None:
    """Record the batch size in the run's config.json, or refuse another one than it records: greedy answers can
    differ with the batch size (docs/evaluation.md, "What batching changes"), so a run keeps its own. A run made
    before batch sizes were recorded, with predictions already, is left as it is."""
    recorded = recorded_batch_size(run)
    if recorded == batch_size:
        return
    if recorded is not None:
        raise FasterVLMError(
            f"{run.path} was predicted with {recorded} items per generate call and this command asks for {batch_size}: "
            "answers can differ with the batch size, so a run keeps its own. Leave out --batch-size (or pass "
            f"--batch-size {recorded}), or use another --out, --tag or --run-dir.")
    if run.prediction_files():
        return
    with writing(run.path, f"make {run.path} writable, or use another --out or --tag."):
        write_json_atomic(run.config_file, {**run.config(), BATCH_SIZE: batch_size})


def _default_generation() -> Any:
    from fastervlm.models.base import GenerationSettings

    return GenerationSettings()


def prepare_run(
    pipeline: Any, loaded: LoadedBenchmark, data_root: Path, pruner: Any, generation: Any = None, *, flip: bool = False,
    out: Path | None = None, run_dir: Path | None = None, tag: str | None = None,
) -> RunDir:
    """The run directory for this configuration, created or checked against what it already holds."""
    method = pruner.settings()
    generation = generation or _default_generation()
    if run_dir is None:
        if out is None:
            raise FasterVLMError("give --out (a folder for all runs) or --run-dir (this run's folder).")
        from fastervlm.tiny.identity import model_name

        run_dir = default_run_dir(out, model_name(pipeline.path), loaded.benchmark.name, method, tag)
    run = RunDir(run_dir)
    items = [asdict(item) for item in loaded.items]
    run.create_or_check(run_config(loaded, pipeline, method, generation, flip, data_root, tag), items)
    return run
