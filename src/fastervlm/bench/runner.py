"""Running a benchmark: the schedule of warm-up and timed runs, interleaved across configurations, each
configuration measured in this process or in a worker process of its own (the weights shared, not copied: one
shared buffer per dtype, bench/handover.py)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastervlm.bench.configs import QUESTION, SYNTHETIC_VIDEO, BenchConfig, ModelSource, check_configs, check_run_settings
from fastervlm.bench.measure import Task, make_measurer
from fastervlm.bench.results import BenchResult, BenchRow, ExtractionRow, add_speedups
from fastervlm.errors import FasterVLMError
from fastervlm.models.base import SupportsEagerReference

if TYPE_CHECKING:
    from fastervlm.bench.handover import Handover
    from fastervlm.pipeline import Pipeline

def run_benchmark(
    source: ModelSource,
    configs: Sequence[BenchConfig],
    *,
    video: str | os.PathLike | None = None,
    question: str = QUESTION,
    warmup: int = 1,
    repeats: int = 3,
    max_new_tokens: int = 8,
    reference: bool = True,
    isolate: bool | None = None,
    progress: bool = True,
) -> BenchResult:
    """Measure every configuration (and the [CLS] extraction comparison when `reference`).

    The model is built once here. Runs are interleaved: every configuration's warm-up runs, then `repeats` rounds
    of one timed run per configuration, so a change in the machine's load touches every row alike.
    isolate: each configuration in its own process (default on the CPU, where a process's peak RSS is the only
    honest per-configuration memory figure). The processes receive the model through shared memory (one copy of
    the weights) and stay up for the whole benchmark; each keeps the memory its configuration needed.
    False: everything in this process (on the CPU the memory figures then say they are not isolated).
    """
    from fastervlm.pipeline import resolve_device

    check_run_settings(warmup, repeats, max_new_tokens)
    if not configs:
        raise FasterVLMError("nothing to measure: give at least one method.")
    device = resolve_device(source.device)
    isolate = device.type == "cpu" if isolate is None else isolate
    load_before = load_average()
    with _bench_video(video) as path:
        pipeline = source.build()
        check_configs(pipeline, configs)  # before any worker starts or the progress bar shows
        tasks = [Task("config", c, str(path), question, max_new_tokens, isolate) for c in configs]
        if reference and _has_reference(pipeline):
            tasks += [Task(kind, None, str(path), question, max_new_tokens, isolate) for kind in ("ours", "reference")]
        results = _measure(pipeline, tasks, isolate, ["warmup"] * warmup + ["timed"] * repeats, progress)
    rows = [r for r in results if isinstance(r, BenchRow)]
    add_speedups(rows)
    return BenchResult(
        model=source.describe(), device=str(device), dtype=source.dtype_name(device),
        threads=torch.get_num_threads(), torch_version=torch.__version__,
        video=str(video) if video is not None else SYNTHETIC_VIDEO, warmup=warmup, repeats=repeats,
        max_new_tokens=max_new_tokens, rows=rows, extraction=[r for r in results if isinstance(r, ExtractionRow)],
        notes=_notes(pipeline, reference), load_average=None if load_before is None else (load_before, load_average()),
        llm_width=_llm_width(pipeline),
    )


@contextmanager
def _bench_video(video: str | os.PathLike | None) -> Iterator[Path]:
    """The video to answer about: the given one, or a synthetic clip written into a temporary folder."""
    if video is not None:
        yield Path(video)
        return
    from fastervlm.tiny.video import write_synthetic_video

    with tempfile.TemporaryDirectory(prefix="fastervlm-bench-") as scratch:
        yield write_synthetic_video(Path(scratch) / "bench.mp4", num_frames=48, height=240, width=320)


def _measure(pipeline: Pipeline, tasks: list[Task], isolate: bool, schedule: list[str], progress: bool) -> list[Any]:
    """Run the schedule (every task per round) and collect each task's result. The progress bar starts once every
    worker is ready (starting them is a one-off cost, not the rate of the runs) and counts exactly the runs made."""
    from tqdm import tqdm

    with _workers(pipeline, tasks, isolate, progress) as workers:
        bar = tqdm(total=len(schedule) * len(workers), desc="bench", unit="run", disable=not progress, file=sys.stderr)
        warmup = schedule.count("warmup")
        for number, command in enumerate(schedule):
            for task, worker in workers:
                bar.set_postfix_str(f"{task.label} ({command} {number + 1 - (warmup if command == 'timed' else 0)})")
                worker(command)
                bar.update()
        bar.close()
        return [worker("result") for _, worker in workers]


def _llm_width(pipeline: Pipeline) -> int | None:
    """The LLM's hidden size (from the adapter's llm_config)."""
    return getattr(pipeline.adapter.llm_config, "hidden_size", None)


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system has none): other work skews timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _has_reference(pipeline: Pipeline) -> bool:
    return isinstance(pipeline.adapter.stream, SupportsEagerReference)


def _notes(pipeline: Pipeline, reference: bool) -> list[str]:
    if reference and not _has_reference(pipeline):
        return [f"no [CLS] extraction comparison: the reference extraction is written for the LanguageBind video "
                f"tower (original-format Video-LLaVA), and {pipeline.adapter.family} has another encoder."]
    return []


@contextmanager
def _workers(pipeline: Pipeline, tasks: list[Task], isolate: bool, progress: bool = False
             ) -> Iterator[list[tuple[Task, Any]]]:
    """One callable per task: command ("warmup", "timed", "result") -> reply, in this process or in its own (all
    started at once, and ready when yielded)."""
    if not isolate:
        measurers = [make_measurer(pipeline, task) for task in tasks]
        yield [(task, measurer.command) for task, measurer in zip(tasks, measurers)]
        return
    import torch.multiprocessing as mp  # its pickler sends tensors through shared memory

    from fastervlm.bench.handover import hand_over

    context = _context(mp)
    handover = hand_over(pipeline)  # the weights as a few shared buffers: one descriptor each, not one per tensor
    remotes: list[_Remote] = []
    try:
        _start(remotes, lambda task: _Remote(context, handover, task), tasks, progress)
        yield [(task, remote) for task, remote in zip(tasks, remotes)]
    finally:
        for remote in remotes:
            remote.close()


def _context(mp: Any) -> Any:
    """Worker processes forked from a fork server that has imported torch and the benchmark once (where the
    platform has one), instead of spawned: each spawned process would import them again, seconds per process on a
    small machine. The server is a fresh process (no OpenMP threads, no model), so forking from it is safe."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "fastervlm.bench.measure", "fastervlm.pipeline"])
    return context


def _start(remotes: list[_Remote], make: Callable[[Task], _Remote], tasks: list[Task], progress: bool) -> None:
    """Start a worker per task (all at once, into `remotes`), then wait until each has touched the shared weights:
    a bar of its own, since this is a one-off cost that says nothing about the rate of the runs that follow."""
    from tqdm import tqdm

    with tqdm(total=len(tasks), desc="bench: starting workers", unit="process", disable=not progress,
              file=sys.stderr) as bar:
        remotes.extend(make(task) for task in tasks)
        for remote in remotes:
            remote.wait_ready()
            bar.update()


class _Remote:
    """A process that measures one task against the shared model, driven over a pipe."""

    def __init__(self, context: Any, handover: Handover, task: Task) -> None:
        self.task = task
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_remote_main, args=(child, handover, task), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            self._receive()
            self.ready = True

    def __call__(self, command: str) -> Any:
        self.wait_ready()
        self.connection.send(command)
        return self._receive()

    def _receive(self) -> Any:
        try:
            status, value = self.connection.recv()
        except EOFError:
            raise FasterVLMError(f"the process measuring {self.task.label} died (exit code {self.process.exitcode}; "
                                 "out of memory?); try fewer configurations or --in-process.") from None
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        self.connection.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


def _remote_main(connection: Any, handover: Handover, task: Task) -> None:
    """The worker process: rebuild the pipeline on the shared weights, make them resident (so they count before the
    first run), then serve.

    Ctrl-C is the parent's to handle: it closes the pipes, and a worker whose parent stopped (Ctrl-C, or another
    configuration failed) ends quietly instead of printing a traceback of its own."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pipeline = handover.pipeline()
        for module in [m for m in vars(pipeline.adapter).values() if isinstance(m, torch.nn.Module)]:
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.sum()
        measurer = make_measurer(pipeline, task)
        connection.send(("ready", None))
        while True:
            command = connection.recv()
            connection.send(("ok", measurer.command(command)))
            if command == "result":
                return
    except (EOFError, BrokenPipeError):
        return  # the parent closed the pipe: it stopped, and has nothing more to ask
    except Exception as error:  # noqa: BLE001  (sent to the parent, which raises it)
        with suppress(OSError):  # the parent may be gone as well
            connection.send(("error", error if isinstance(error, FasterVLMError) else
                             FasterVLMError(f"measuring {task.label} failed: {type(error).__name__}: {error}")))


