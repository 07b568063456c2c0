"""Speed, memory and FLOPs of pruning configurations, measured as data (`fastervlm bench` prints it).

    from fastervlm.bench import BenchConfig, ModelSource, default_configs, run_benchmark
    result = run_benchmark(ModelSource.video_llava_7b(llm_layers=2, vision_layers=3), default_configs(), repeats=3)
    result.rows, result.extraction, result.to_json(), check_targets(result), plot(result, "bench.png")

Per configuration (a method name and its settings), over `repeats` timed runs after `warmup` runs, interleaved
across configurations (median, min, max):
- seconds per pipeline stage as `Answer.timings` reports them (decode_video, vision_encoder, cls_scoring,
  selection, projector, llm_prefill, llm_decode; CUDA-synchronised), time to first token (TTFT_STAGES: from the
  preprocessed frames to the first generated token) and decode time per generated token;
- peak memory: on CUDA the max allocated bytes (counter reset before each run); on the CPU the peak RSS of a
  process that runs only this configuration (its counter reset before each run, so building the model does not
  count), next to the RSS before the first run;
- the LLM's KV cache right after the prefill, in bytes, read from the cache object itself;
- the analytic LLM prefill FLOPs of fastervlm.flops through the method's own schedule (Pruner.llm_prefill_flops);
- speedups over the unpruned row (method none).
Plus the [CLS] extraction side by side: our tower pass (SDPA, stops at the feature layer, one [CLS] row from the
q/k) against the original's (models.languagebind_reference: every layer eager, every attention map returned).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastervlm.errors import BudgetError, FasterVLMError
from fastervlm.timing import TTFT_STAGES, StageTimer, time_to_first_token

if TYPE_CHECKING:
    from fastervlm.pipeline import Pipeline
    from fastervlm.tiny import TinySpec

DEFAULT_REDUCTIONS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
"""Video-LLaVA: 2048 / 1536 / 1024 / 512 / 208 / 104 / 0 visual tokens, the seed table's "# Token" column."""
DEFAULT_METHODS = ("fastervlm", "fastv")
PIPELINE_STAGES = ("decode_video", *TTFT_STAGES, "llm_decode")
QUESTION = "What is happening in the video?"
SYNTHETIC_VIDEO = "synthetic 320x240 H.264 clip, 48 frames (media.write_synthetic_video)"
TARGET_REDUCTION = 0.9
"""The issue's targets are stated at 208 tokens: r = 0.9 on Video-LLaVA."""
TARGET_MIN_WIDTH = 512
"""The targets speak of real models (Video-LLaVA-7B's geometry, 4096 wide, or a real checkpoint). A toy LLM
narrower than this (the demo's tiny model is 64 wide) spends its time in per-call overheads: its timings say
nothing about speed, so check_targets reports the targets as not applicable (met None) on it."""


# ----- what is measured ------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """One configuration: a registered method and its settings (as `create_pruner` takes them)."""

    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.settings.items())])


def default_configs(
    methods: Sequence[str] = DEFAULT_METHODS,
    reductions: Sequence[float] = DEFAULT_REDUCTIONS,
    *,
    keeps: Sequence[int] | None = None,
    method_settings: dict[str, dict[str, Any]] | None = None,
) -> list[BenchConfig]:
    """The unpruned row first, then every method at every budget (reductions, or per-frame keeps when given).
    Budgets out of range are refused here, before any model is built (keeps are checked against the model's
    patch count by check_budgets once it is known)."""
    budgets = [{"keep": k} for k in keeps] if keeps is not None else [{"reduction": r} for r in reductions]
    extra = method_settings or {}
    configs = [BenchConfig("none")] + [
        BenchConfig(method, {**budget, **extra.get(method, {})}) for method in methods for budget in budgets
    ]
    check_budgets(configs)
    return configs


def check_budgets(configs: Sequence[BenchConfig], num_patches: int | None = None) -> None:
    """Refuse a reduction outside [0, 1] or a keep outside [0, num_patches] (keeps only once the patch count is
    known), naming the configuration: the same rule as the methods apply (resolve_keep)."""
    from fastervlm.selection import resolve_keep

    for config in configs:
        keep, reduction = config.settings.get("keep"), config.settings.get("reduction")
        if (keep is None and reduction is None) or (num_patches is None and keep is not None):
            continue
        try:
            resolve_keep(num_patches or 0, keep=keep, reduction=reduction)
        except BudgetError as err:
            raise BudgetError(f"bench {config.label}: {err.template}") from None  # its range names the patch count


@dataclass(frozen=True)
class ModelSource:
    """What to benchmark, in a form a fresh process can rebuild: a checkpoint folder, or a tiny/real-width
    geometry built in memory (`tiny.build_adapter`)."""

    checkpoint: str | None = None
    video_tower: str | None = None
    geometry: TinySpec | None = None
    geometry_name: str = ""
    device: str | None = None

    @staticmethod
    def tiny(device: str | None = "cpu") -> ModelSource:
        """The demo's tiny checkpoint (written into the cache on first use)."""
        from fastervlm.tiny import ensure_tiny_checkpoint

        return ModelSource(checkpoint=str(ensure_tiny_checkpoint()), device=device)

    @staticmethod
    def video_llava_7b(llm_layers: int, vision_layers: int, device: str | None = "cpu") -> ModelSource:
        """Video-LLaVA-7B's widths, heads and token counts with fewer layers, random weights, built in memory."""
        from fastervlm.tiny import TinySpec

        if llm_layers < 1 or vision_layers < 2:
            raise FasterVLMError("--llm-layers must be at least 1 and --vision-layers at least 2 (the feature layer is "
                                 "the penultimate one).")
        return ModelSource(geometry=TinySpec.video_llava_7b(llm_layers=llm_layers, vision_layers=vision_layers),
                           geometry_name=f"video-llava-7b geometry, {llm_layers} LLM / {vision_layers} vision layers",
                           device=device)

    def describe(self) -> str:
        if self.geometry is not None:
            return self.geometry_name or f"in-memory geometry {self.geometry}"
        return str(self.checkpoint)

    def dtype_name(self, device: torch.device) -> str:
        if device.type == "cpu":
            return "float32"
        return "float16" if self.geometry is not None else "the checkpoint's dtype"

    def build(self) -> Pipeline:
        """Load (or build) the pipeline in fp32 on the CPU, the checkpoint's dtype on CUDA."""
        from fastervlm.pipeline import Pipeline, load, resolve_device

        device = resolve_device(self.device)
        if self.geometry is None:
            options = {"video_tower": self.video_tower} if self.video_tower else {}
            return load(self.checkpoint, device=device, dtype=torch.float32 if device.type == "cpu" else None, **options)
        from fastervlm.tiny import build_adapter

        dtype = torch.float32 if device.type == "cpu" else torch.float16
        return Pipeline(build_adapter(self.geometry, device, dtype), Path(self.geometry_name or "geometry"))


# ----- result rows -----------------------------------------------------------------------------------------------
@dataclass
class Stat:
    """Median, min and max of repeated measurements (seconds, or whatever unit the values have)."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: Sequence[float]) -> Stat | None:
        return Stat(statistics.median(values), min(values), max(values)) if values else None


@dataclass
class Memory:
    """Peak memory of one configuration and the level before its first run (bytes); `kind` says how measured."""

    peak_bytes: int | None
    baseline_bytes: int | None
    kind: str

    @property
    def added_bytes(self) -> int | None:
        """Peak above the level before the first run: activations, caches and temporaries."""
        return None if self.peak_bytes is None or self.baseline_bytes is None else self.peak_bytes - self.baseline_bytes


@dataclass
class BenchRow:
    """One configuration's measurements."""

    label: str
    method: str
    settings: dict[str, Any]
    stage: str
    visual_tokens: int
    prompt_tokens: int
    generated_tokens: int
    timings: dict[str, Stat]
    """Per stage (PIPELINE_STAGES), plus "time_to_first_token" and "decode_per_token" (seconds)."""
    memory: Memory
    kv_cache_bytes: int | None
    llm_prefill_flops: int | None
    ttft_speedup: float | None = None
    prefill_speedup: float | None = None
    flops_ratio: float | None = None
    """Unpruned row's value over this row's (for FLOPs: how many times fewer)."""

    def seconds(self, stage: str) -> float | None:
        stat = self.timings.get(stage)
        return None if stat is None else stat.median


@dataclass
class ExtractionRow:
    """One way of getting the [CLS] attention out of the video tower: its encoder pass, its scoring step."""

    name: str
    description: str
    layers_run: int
    encoder: Stat
    cls_scoring: Stat
    attention_bytes: int
    """Attention data held for scoring: every returned map (reference), or the [CLS] queries and keys (ours)."""
    memory: Memory
    max_score_difference: float | None = None
    """Largest |reference score - our score| on the same pixels (reference row only)."""


@dataclass
class BenchResult:
    model: str
    device: str
    dtype: str
    threads: int
    torch_version: str
    video: str
    warmup: int
    repeats: int
    max_new_tokens: int
    rows: list[BenchRow]
    extraction: list[ExtractionRow]
    notes: list[str] = field(default_factory=list)
    load_average: tuple[float, float] | None = None
    """The machine's 1-minute load average before and after the run (other work on the machine skews times)."""
    llm_width: int | None = None
    """The LLM's hidden size (None: unknown); below TARGET_MIN_WIDTH the targets are not applicable."""

    def baseline(self) -> BenchRow | None:
        """The unpruned row the speedups refer to."""
        return next((row for row in self.rows if row.method == "none"), None)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["targets"] = [asdict(t) for t in check_targets(self)]
        return out


@dataclass
class Target:
    """One of the issue's claims, checked on this result (met None: this run cannot tell)."""

    name: str
    measured: str
    met: bool | None


# ----- running -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    kind: str  # "config", "ours" or "reference"
    config: BenchConfig | None
    video: str
    question: str
    max_new_tokens: int
    isolated: bool

    @property
    def label(self) -> str:
        return self.config.label if self.config is not None else f"[CLS] extraction: {self.kind}"


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
    from tqdm import tqdm

    from fastervlm.pipeline import resolve_device

    check_run_settings(warmup, repeats, max_new_tokens)
    if not configs:
        raise FasterVLMError("nothing to measure: give at least one method.")
    device = resolve_device(source.device)
    isolate = device.type == "cpu" if isolate is None else isolate
    load_before = _load_average()
    video_name = str(video) if video is not None else SYNTHETIC_VIDEO
    with tempfile.TemporaryDirectory(prefix="fastervlm-bench-") as scratch:
        if video is None:
            from fastervlm.media import write_synthetic_video

            video = write_synthetic_video(Path(scratch) / "bench.mp4", num_frames=48, height=240, width=320)
        tasks = [_Task("config", c, str(video), question, max_new_tokens, isolate) for c in configs]
        if reference:
            tasks += [_Task(kind, None, str(video), question, max_new_tokens, isolate) for kind in ("ours", "reference")]
        pipeline = source.build()
        check_budgets(configs, pipeline.num_patches)  # before any worker starts or the progress bar shows
        with _workers(pipeline, tasks, isolate) as workers:
            schedule = ["warmup"] * warmup + ["timed"] * repeats
            bar = tqdm(total=len(schedule) * len(workers), desc="bench", unit="run", disable=not progress, file=sys.stderr)
            for number, command in enumerate(schedule):
                for task, worker in workers:
                    bar.set_postfix_str(f"{task.label} ({command} {number + 1 - (warmup if command == 'timed' else 0)})")
                    worker(command)
                    bar.update()
            bar.close()
            results = [worker("result") for _, worker in workers]
    notes = _notes(pipeline, reference)
    rows = [r for r in results if isinstance(r, BenchRow)]
    extraction = [r for r in results if isinstance(r, ExtractionRow)]
    _add_speedups(rows)
    return BenchResult(
        model=source.describe(), device=str(device), dtype=source.dtype_name(device),
        threads=torch.get_num_threads(), torch_version=torch.__version__, video=video_name, warmup=warmup,
        repeats=repeats, max_new_tokens=max_new_tokens, rows=rows, extraction=extraction, notes=notes,
        load_average=None if load_before is None else (load_before, _load_average()),
        llm_width=_llm_width(pipeline),
    )


def _llm_width(pipeline: Pipeline) -> int | None:
    """The LLM's hidden size, when the adapter has a Llama-style LLM with a config."""
    config = getattr(getattr(pipeline.adapter, "llm", None), "config", None)
    return getattr(config, "hidden_size", None)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def check_run_settings(warmup: int, repeats: int, max_new_tokens: int) -> None:
    if repeats < 1 or warmup < 0 or max_new_tokens < 1:
        raise FasterVLMError("--repeats and --max-new-tokens must be at least 1, --warmup at least 0.")


def _has_reference_tower(pipeline: Pipeline) -> bool:
    from fastervlm.models.languagebind import LanguageBindVideoTower

    return isinstance(getattr(pipeline.adapter, "tower", None), LanguageBindVideoTower)


def _notes(pipeline: Pipeline, reference: bool) -> list[str]:
    if reference and not _has_reference_tower(pipeline):
        return [f"no [CLS] extraction comparison: the reference extraction is written for the LanguageBind video "
                f"tower (original-format Video-LLaVA), and {pipeline.adapter.family} has another encoder."]
    return []


@contextmanager
def _workers(pipeline: Pipeline, tasks: list[_Task], isolate: bool) -> Iterator[list[tuple[_Task, Any]]]:
    """One callable per task: command ("warmup", "timed", "result") -> reply, in this process or in its own."""
    tasks = [t for t in tasks if t.kind == "config" or _has_reference_tower(pipeline)]
    if not isolate:
        measurers = [_measurer(pipeline, task) for task in tasks]
        yield [(task, measurer.command) for task, measurer in zip(tasks, measurers)]
        return
    import torch.multiprocessing as mp  # its pickler sends tensors through shared memory

    context = mp.get_context("spawn")
    remotes = [_Remote(context, pipeline, task) for task in tasks]  # all start at once, then each is awaited
    try:
        yield [(task, remote) for task, remote in zip(tasks, remotes)]
    finally:
        for remote in remotes:
            remote.close()


class _Remote:
    """A process that measures one task against the shared model, driven over a pipe."""

    def __init__(self, context: Any, pipeline: Pipeline, task: _Task) -> None:
        self.task = task
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_remote_main, args=(child, pipeline, task), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def __call__(self, command: str) -> Any:
        if not self.ready:
            self._receive()
            self.ready = True
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


def _remote_main(connection: Any, pipeline: Pipeline, task: _Task) -> None:
    """The worker process: make the shared weights resident (so they count before the first run), then serve.

    Ctrl-C is the parent's to handle: it closes the pipes, and a worker whose parent stopped (Ctrl-C, or another
    configuration failed) ends quietly instead of printing a traceback of its own."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for module in [m for m in vars(pipeline.adapter).values() if isinstance(m, torch.nn.Module)]:
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.sum()
        measurer = _measurer(pipeline, task)
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


# ----- memory ------------------------------------------------------------------------------------------------------
def _proc_status_bytes(field_name: str) -> int | None:
    """A field of /proc/self/status in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _PeakMeter:
    """Peak memory over a series of runs: CUDA max allocated, or the CPU peak RSS with its counter (VmHWM) reset
    before each run, so that what happened before the first run does not count."""

    def __init__(self, device: torch.device, isolated: bool) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.baseline = torch.cuda.memory_allocated(device) if self.cuda else _proc_status_bytes("VmRSS")
        self.peak: int | None = None
        self.kind = "CUDA max allocated" if self.cuda else (
            "peak RSS, own process" if isolated else "peak RSS in a shared process (allocator reuse can hide growth)")

    @contextmanager
    def run(self) -> Iterator[None]:
        self._reset()
        yield
        peak = self._read()
        if peak is not None:
            self.peak = peak if self.peak is None else max(self.peak, peak)

    def memory(self) -> Memory:
        return Memory(self.peak, self.baseline, self.kind)

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "peak RSS since the process started (the counter cannot be reset here)"

    def _read(self) -> int | None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        peak = _proc_status_bytes("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak


# ----- one pipeline configuration ----------------------------------------------------------------------------------
def _cache_bytes(cache: Any) -> int | None:
    """Bytes held by a transformers Cache (its layers' key and value tensors)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    tensors = [getattr(layer, name, None) for layer in layers for name in ("keys", "values")]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@contextmanager
def _kv_probe(pipeline: Pipeline) -> Iterator[list[int | None]]:
    """Records the KV-cache size after the first LLM forward of the block (the prefill)."""
    sizes: list[int | None] = []
    llm = getattr(pipeline.adapter, "llm", None)
    if not isinstance(llm, torch.nn.Module):
        yield sizes
        return

    def hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not sizes:
            sizes.append(_cache_bytes(getattr(output, "cache", None)))

    handle = llm.register_forward_hook(hook, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def _llm_flops(pipeline: Pipeline, pruner: Any, prompt_tokens: int, visual_tokens: int) -> int | None:
    """The analytic prefill FLOPs of this method on this model (None when the adapter has no Llama-style LLM)."""
    from fastervlm.flops import LLMGeometry

    llm = getattr(pipeline.adapter, "llm", None)
    if llm is None or not hasattr(llm, "config"):
        return None
    frames, patches = pipeline.num_frames, pipeline.num_patches
    in_prompt = visual_tokens if pruner.stage == "vision" else frames * patches  # LLM-stage: all reach the prompt
    return pruner.llm_prefill_flops(LLMGeometry.from_config(llm.config), text_tokens=prompt_tokens - in_prompt,
                                    frames=frames, num_patches=patches)


def _measurer(pipeline: Pipeline, task: _Task) -> _ConfigMeasurer | _ExtractionMeasurer:
    return _ConfigMeasurer(pipeline, task) if task.kind == "config" else _ExtractionMeasurer(pipeline, task)


class _ConfigMeasurer:
    """Runs one configuration through the pipeline, one run per command, and makes its row."""

    def __init__(self, pipeline: Pipeline, task: _Task) -> None:
        from fastervlm.models.base import GenerationSettings

        assert task.config is not None
        self.pipeline, self.task, self.config = pipeline, task, task.config
        self.pruner = pipeline.pruner(self.config.method, **self.config.settings)
        self.generation = GenerationSettings(max_new_tokens=task.max_new_tokens)
        self.meter = _PeakMeter(pipeline.adapter.device, task.isolated)
        self.timings: list[dict[str, float]] = []
        self.answer: Any = None
        self.kv: int | None = None

    def command(self, command: str) -> BenchRow | None:
        if command == "result":
            return self.row()
        with torch.inference_mode(), self.meter.run():
            frames = self.pipeline.frames(video=self.task.video)
            with _kv_probe(self.pipeline) as kv:
                self.answer = self.pipeline.answer_frames([frames], [self.task.question], self.pruner, self.generation)[0]
        self.kv = kv[0] if kv else None
        if command == "timed":
            self.timings.append(_with_totals(self.answer.timings, len(self.answer.output_ids)))
        return None

    def row(self) -> BenchRow:
        answer = self.answer
        stages = dict.fromkeys(stage for run in self.timings for stage in run)
        return BenchRow(
            label=self.config.label, method=self.config.method, settings=dict(self.config.settings),
            stage=self.pruner.stage, visual_tokens=answer.visual_tokens, prompt_tokens=answer.prompt_tokens,
            generated_tokens=len(answer.output_ids),
            timings={stage: Stat.of([run[stage] for run in self.timings if stage in run]) for stage in stages},
            memory=self.meter.memory(), kv_cache_bytes=self.kv,
            llm_prefill_flops=_llm_flops(self.pipeline, self.pruner, answer.prompt_tokens, answer.visual_tokens),
        )


def _with_totals(timings: dict[str, float], generated: int) -> dict[str, float]:
    """The stage timings plus time to first token and, when more than one token came, decode time per token."""
    out = {stage: timings[stage] for stage in PIPELINE_STAGES if stage in timings}
    out["time_to_first_token"] = time_to_first_token(timings)
    if generated > 1 and "llm_decode" in timings:
        out["decode_per_token"] = timings["llm_decode"] / (generated - 1)
    return out


# ----- the [CLS] extraction: ours against the original's ------------------------------------------------------------
class _ExtractionMeasurer:
    """Our tower pass + [CLS] row ("ours"), or the original's eager pass with every map ("reference")."""

    def __init__(self, pipeline: Pipeline, task: _Task) -> None:
        adapter = pipeline.adapter
        self.task, self.stream, self.device = task, adapter.stream, adapter.device
        self.tower, self.select_layer = adapter.stream.tower, adapter.stream.select_layer
        self.pixels = pipeline.frames(video=task.video).pixels.unsqueeze(0).to(adapter.device, adapter.dtype)
        self.meter = _PeakMeter(adapter.device, task.isolated)
        self.timings: list[dict[str, float]] = []
        self.held = 0

    def command(self, command: str) -> ExtractionRow | None:
        if command == "result":
            return self.row()
        timer = StageTimer(self.device)
        with torch.inference_mode(), self.meter.run():
            self.held = self._reference(timer) if self.task.kind == "reference" else self._ours(timer)[1]
        if command == "timed":
            self.timings.append(timer.seconds)
        return None

    def _ours(self, timer: StageTimer) -> tuple[torch.Tensor, int]:
        """The engine's encode (SDPA, stops at the feature layer, [CLS] row from its q/k); also the bytes of the
        [CLS] queries and keys it reads."""
        from fastervlm.engine import encode
        from fastervlm.methods.base import CLS_SCORES

        seconds = StageTimer(self.device)
        encoded = encode(self.stream, self.pixels, frozenset({CLS_SCORES}), seconds)
        timer.add("encoder", seconds.seconds["vision_encoder"])
        timer.add("cls_scoring", seconds.seconds["cls_scoring"])
        attention = self.stream.feature_attention()
        frames, tokens = self.pixels.shape[0] * self.pixels.shape[1], self.tower.num_patches + 1
        held = frames * attention.num_heads * (1 + tokens) * attention.head_dim * self.pixels.element_size()
        return torch.stack([sample.video.cls_scores for sample in encoded]), held

    def _reference(self, timer: StageTimer) -> int:
        from fastervlm.models.languagebind_reference import eager_tower_pass, feature_select

        with timer("encoder"):
            result = eager_tower_pass(self.tower, self.pixels)
        with timer("cls_scoring"):
            self.scores = feature_select(self.tower, result, self.select_layer)[1]
        return result.attention_bytes

    def row(self) -> ExtractionRow:
        reference = self.task.kind == "reference"
        difference = None
        if reference:
            with torch.inference_mode():
                ours = self._ours(StageTimer(self.device))[0]
            difference = float((self.scores.float() - ours.float()).abs().max())
        layers = len(self.tower.vision_model.encoder.layers)
        return ExtractionRow(
            name=self.task.kind,
            description=("every layer eager, all hidden states and attention maps returned, [CLS] row read from the "
                         "feature layer's map (the original)") if reference else
                        "SDPA, stops at the feature layer, [CLS] row from that layer's q/k (fastervlm)",
            layers_run=layers if reference else self.tower.feature_layer_index(self.select_layer) + 1,
            encoder=Stat.of([t["encoder"] for t in self.timings]),
            cls_scoring=Stat.of([t["cls_scoring"] for t in self.timings]),
            attention_bytes=self.held, memory=self.meter.memory(), max_score_difference=difference,
        )


# ----- derived numbers ----------------------------------------------------------------------------------------------
def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def _add_speedups(rows: list[BenchRow]) -> None:
    base = next((row for row in rows if row.method == "none"), None)
    if base is None:
        return
    for row in rows:
        row.ttft_speedup = _ratio(base.seconds("time_to_first_token"), row.seconds("time_to_first_token"))
        row.prefill_speedup = _ratio(base.seconds("llm_prefill"), row.seconds("llm_prefill"))
        row.flops_ratio = _ratio(base.llm_prefill_flops, row.llm_prefill_flops)


def check_targets(result: BenchResult) -> list[Target]:
    """The issue's three targets on this result; not applicable (met None) on a toy model (TARGET_MIN_WIDTH)."""
    targets = _judge_targets(result)
    if result.llm_width is not None and result.llm_width < TARGET_MIN_WIDTH:
        why = f" (n/a: a toy model, LLM {result.llm_width} wide < {TARGET_MIN_WIDTH}, says nothing about speed)"
        return [Target(t.name, t.measured + why, None) for t in targets]
    return targets


def _judge_targets(result: BenchResult) -> list[Target]:
    targets = []
    row = next((r for r in result.rows if r.method == "fastervlm" and r.settings == {"reduction": TARGET_REDUCTION}), None)
    name = f"LLM prefill speedup at r={TARGET_REDUCTION} reaches 80% of the analytic FLOPs ratio"
    if row is None or row.prefill_speedup is None or row.flops_ratio is None:
        targets.append(Target(name, f"needs a 'none' row and a fastervlm reduction={TARGET_REDUCTION} row", None))
    else:
        share = row.prefill_speedup / row.flops_ratio
        targets.append(Target(name, f"{row.visual_tokens} tokens: prefill x{row.prefill_speedup:.2f} vs FLOPs "
                                    f"x{row.flops_ratio:.2f} = {100 * share:.0f}%", share >= 0.8))
    rows = {r.name: r for r in result.extraction}
    ours, reference = rows.get("ours"), rows.get("reference")
    name = "[CLS] scoring costs under 1% of the vision encoder"
    if ours is None:
        targets.append(Target(name, "needs the [CLS] extraction rows", None))
    else:
        share = ours.cls_scoring.median / ours.encoder.median
        targets.append(Target(name, f"{1e3 * ours.cls_scoring.median:.3f} ms of {1e3 * ours.encoder.median:.1f} ms "
                                    f"= {100 * share:.3f}%", share < 0.01))
    name = "our encoder pass is faster and uses less peak memory than the reference-style extraction"
    if ours is None or reference is None:
        targets.append(Target(name, "needs the [CLS] extraction rows", None))
    else:
        ours_s = ours.encoder.median + ours.cls_scoring.median
        ref_s = reference.encoder.median + reference.cls_scoring.median
        ours_m, ref_m = ours.memory.peak_bytes, reference.memory.peak_bytes
        memory_ok = None if ours_m is None or ref_m is None else ours_m < ref_m
        measured = f"{1e3 * ours_s:.1f} ms vs {1e3 * ref_s:.1f} ms"
        if memory_ok is not None:
            measured += f"; peak {ours_m / 2**20:.0f} MiB vs {ref_m / 2**20:.0f} MiB"
        targets.append(Target(name, measured, None if memory_ok is None else (ours_s < ref_s and memory_ok)))
    return targets


def plot(result: BenchResult, path: str | os.PathLike) -> Path:
    """PNG: time to first token and LLM prefill FLOPs against visual tokens kept, one line per method, with the
    speedup over the unpruned row written at each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    base = result.baseline()
    for method in dict.fromkeys(r.method for r in result.rows if r.method != "none"):
        rows = sorted((r for r in result.rows if r.method == method), key=lambda r: r.visual_tokens)
        tokens = [r.visual_tokens for r in rows]
        ttft = [r.timings["time_to_first_token"] for r in rows]
        left.errorbar(tokens, [1e3 * s.median for s in ttft], marker="o", capsize=3, label=method,
                      yerr=[[1e3 * (s.median - s.low) for s in ttft], [1e3 * (s.high - s.median) for s in ttft]])
        for r, s in zip(rows, ttft):
            if r.ttft_speedup is not None:
                left.annotate(f"x{r.ttft_speedup:.1f}", (r.visual_tokens, 1e3 * s.median), textcoords="offset points",
                              xytext=(4, 6), fontsize=8)
        if all(r.llm_prefill_flops is not None for r in rows):
            right.plot(tokens, [r.llm_prefill_flops / 1e9 for r in rows], marker="o", label=method)
    if base is not None:
        left.axhline(1e3 * base.timings["time_to_first_token"].median, color="grey", linestyle=":", label="none (unpruned)")
        if base.llm_prefill_flops is not None:
            right.axhline(base.llm_prefill_flops / 1e9, color="grey", linestyle=":", label="none (unpruned)")
    left.set(xlabel="visual tokens kept", ylabel="time to first token (ms, median, min-max)", title="Time to first token")
    right.set(xlabel="visual tokens kept", ylabel="LLM prefill GFLOPs (analytic)", title="LLM prefill FLOPs")
    for axes in (left, right):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"{result.model} on {result.device} ({result.dtype}, {result.threads} threads)", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
