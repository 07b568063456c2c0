"""`fastervlm bench --eval`: the evaluation harness against a plain per-item loop, on one synthetic benchmark.

    result = run_eval_benchmark(ModelSource.tiny(), [BenchConfig("fastervlm", {"reduction": 0.9})], videos=4,
                                questions=8)
    result.rows            # [per-item loop, harness]: items/s, seconds per stage, video encodings, identical answers

The per-item loop is what the original scripts and lmms-eval do: for every question, decode its video, run the
vision tower and the LLM at batch size 1 (`Pipeline.answer`). The harness is `eval predict` with its defaults
(`fastervlm.eval.predict.prepare_run` + `predict_items`), or with several configurations `eval sweep`'s
`sweep_predict`, writing real run folders into a temporary directory. Both answer the same items with the same
configurations after one untimed warm-up answer per configuration; the harness's predictions are compared with
the loop's item by item (text, and output ids where the records hold them).

Fair under noise: the two run in rounds, alternating which goes first (loop then harness, harness then loop, ...),
and the speedup is the median of each round's ratio, with its range, so that a change of load on the machine
between two long phases cannot make the ratio; the load average is read at the start of every round.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastervlm.bench.configs import PIPELINE_STAGES, BenchConfig, ModelSource, check_configs
from fastervlm.bench.synthetic import SyntheticBenchmark, VideoShape, check_size, write_synthetic_benchmark
from fastervlm.errors import FasterVLMError

if TYPE_CHECKING:
    from fastervlm.eval.predict import PredictSummary
    from fastervlm.pipeline import Pipeline

LOOP = "per-item loop"
HARNESS = "harness"


@dataclass
class EvalRunRow:
    """One way of answering every item of every configuration."""

    name: str
    items: int
    seconds: float
    video_encodings: int
    """Videos that went through the vision tower (a batch of B samples counts B)."""
    stage_seconds: dict[str, float]
    """Seconds per pipeline stage, summed over the items (stages may overlap: the harness decodes ahead)."""
    stage_source: str
    """Where stage_seconds came from: the loop's answers, the harness's summary, or its prediction records."""
    identical: int | None = None
    """Items whose prediction equals the per-item loop's (None on the loop's own row)."""
    errors: int = 0
    speedup: float | None = None
    """items/s over the per-item loop's items/s: the median over the rounds of the ratio within each round."""
    round_seconds: list[float] = field(default_factory=list)
    """Wall seconds of each round (`seconds` is their median)."""
    speedup_range: tuple[float, float] | None = None
    """The lowest and highest ratio of a round."""

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class EvalBenchResult:
    model: str
    device: str
    dtype: str
    threads: int
    torch_version: str
    data: str
    """The synthetic benchmark: videos x questions, frame size, duration."""
    configurations: list[str]
    max_new_tokens: int
    rows: list[EvalRunRow]
    load_average: tuple[float, float] | None = None
    rounds: int = 1
    round_loads: list[float | None] = field(default_factory=list)
    """The 1-minute load average at the start of each round."""
    notes: list[str] = field(default_factory=list)

    @property
    def all_identical(self) -> bool:
        return all(row.identical == row.items and not row.errors for row in self.rows if row.identical is not None)

    def to_json(self) -> dict[str, Any]:
        rows = [{**asdict(row), "items_per_second": row.items_per_second} for row in self.rows]
        return {**asdict(self), "rows": rows, "all_identical": self.all_identical}


@dataclass
class _Prediction:
    text: str | None
    output_ids: list[int] | None


def run_eval_benchmark(
    source: ModelSource,
    configs: Sequence[BenchConfig],
    *,
    videos: int = 4,
    questions: int = 8,
    shape: VideoShape = VideoShape(),
    max_new_tokens: int = 8,
    batch_size: int | None = None,
    rounds: int = 3,
    progress: bool = True,
) -> EvalBenchResult:
    """Build the synthetic benchmark, then answer it with the per-item loop and with the harness (a sweep when
    several configurations are given) in `rounds` alternating rounds, and compare. Generation is greedy with
    `max_new_tokens` for both (random weights rarely stop early, and the harness's default of 1024 would measure
    nothing but decoding). batch_size: the harness's (None: its default for the device)."""
    from fastervlm.bench.runner import load_average
    from fastervlm.models.base import GenerationSettings
    from fastervlm.pipeline import resolve_device

    if not configs:
        raise FasterVLMError("nothing to measure: give at least one method.")
    if max_new_tokens < 1:
        raise FasterVLMError("--max-new-tokens must be at least 1.")
    if rounds < 1:
        raise FasterVLMError("--rounds must be at least 1.")
    check_size(videos, questions, shape)
    device = resolve_device(source.device)
    before = load_average()
    pipelines = _pipelines(source)
    pipeline = pipelines[0][1]  # the transformers one: the per-item loop's
    check_configs(pipeline, configs)
    generation = GenerationSettings(max_new_tokens=max_new_tokens)
    rounds_rows: list[list[EvalRunRow]] = []
    loads: list[float | None] = []
    with tempfile.TemporaryDirectory(prefix="fastervlm-bench-eval-") as scratch:
        data = write_synthetic_benchmark(Path(scratch) / "data", videos=videos, questions=questions, shape=shape)
        for _, each in pipelines:
            _warm_up(each, data, configs, generation)
        for index in range(rounds):
            loads.append(load_average())
            rounds_rows.append(_one_round(pipelines, data, configs, generation, Path(scratch) / f"runs-{index}",
                                          batch_size, forward=index % 2 == 0, progress=progress))
    rows = [_median_row([row[column] for row in rounds_rows]) for column in range(len(pipelines) + 1)]
    rows[0].speedup = 1.0
    for column, row in enumerate(rows[1:], start=1):
        ratios = [r[column].items_per_second / r[0].items_per_second for r in rounds_rows]
        row.speedup, row.speedup_range = statistics.median(ratios), (min(ratios), max(ratios))
        row.identical = min(r[column].identical or 0 for r in rounds_rows)  # every round must agree with the loop
    for _, each in pipelines[1:]:
        each.llm.close()
    return EvalBenchResult(
        model=source.describe(), device=str(device), dtype=source.dtype_name(device),
        threads=torch.get_num_threads(), torch_version=torch.__version__, data=data.describe(),
        configurations=[c.label for c in configs], max_new_tokens=max_new_tokens, rows=rows,
        load_average=None if before is None else (before, load_average()), rounds=rounds, round_loads=loads,
    )


def _pipelines(source: ModelSource) -> list[tuple[str, Pipeline]]:
    """The harness's pipelines by name: the transformers one (which the per-item loop also uses), and the one on
    the source's serving engine when it names one, so that the engine is measured against our own harness."""
    from dataclasses import replace

    local = replace(source, backend="transformers", engine_settings=None)
    pipelines = [(HARNESS, local.build())]
    if source.backend != "transformers":
        pipelines.append((f"{HARNESS} on {source.backend}", source.build()))
    return pipelines


def _one_round(pipelines: list[tuple[str, Pipeline]], data: SyntheticBenchmark, configs: Sequence[BenchConfig],
               generation: Any, out: Path, batch_size: int | None, *, forward: bool,
               progress: bool) -> list[EvalRunRow]:
    """The loop and each harness once, in order or in reverse; each harness's predictions compared with the loop's.
    Returns [loop, harness, ...]."""
    runs: list[tuple[str, Pipeline | None]] = [(LOOP, None), *pipelines]
    found: dict[str, tuple[EvalRunRow, dict]] = {}
    for name, pipeline in runs if forward else runs[::-1]:
        if pipeline is None:
            found[name] = _per_item_loop(pipelines[0][1], data, configs, generation, progress)
        else:
            found[name] = _harness(pipeline, data, configs, generation, out / name.replace(" ", "-"), batch_size,
                                   name)
    answers = found[LOOP][1]
    for name, _ in pipelines:
        _compare(found[name][0], answers, found[name][1])
    return [found[name][0] for name, _ in runs]


def _median_row(rounds: list[EvalRunRow]) -> EvalRunRow:
    """One row for several rounds of the same run: the median round's stages and counts, every round's seconds."""
    ordered = sorted(rounds, key=lambda row: row.seconds)
    row = ordered[len(ordered) // 2]
    row.round_seconds = [r.seconds for r in rounds]
    row.errors = max(r.errors for r in rounds)
    return row


@contextmanager
def count_video_encodings(pipeline: Pipeline) -> Iterator[list[int]]:
    """Counts the inputs (videos) that go through the vision tower while the block runs: a wrapper of the visual
    stream's `encode`, which takes one pixel tensor per input."""
    stream = pipeline.adapter.stream
    count = [0]
    encode = stream.encode

    def counted(pixels: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        count[0] += len(pixels)
        return encode(pixels, *args, **kwargs)

    stream.encode = counted  # an instance attribute: it shadows the method until deleted
    try:
        yield count
    finally:
        del stream.encode


def _warm_up(pipeline: Pipeline, data: SyntheticBenchmark, configs: Sequence[BenchConfig], generation: Any) -> None:
    """One untimed answer per configuration: first calls, allocations and kernel choices are paid before either
    timed phase, so that neither carries them."""
    item = data.loaded.items[0]
    video = _video(data, item)
    for config in configs:
        pipeline.answer(item.question, video=video, method=config.method, generation=generation, **config.settings)


def _video(data: SyntheticBenchmark, item: Any) -> Path:
    from fastervlm.eval.benchmarks import video_path

    path = video_path(data.loaded.benchmark, data.data_root, item)
    assert path is not None, f"the synthetic benchmark lacks {item.video_name}"
    return path


def _per_item_loop(pipeline: Pipeline, data: SyntheticBenchmark, configs: Sequence[BenchConfig], generation: Any,
                   progress: bool) -> tuple[EvalRunRow, dict[tuple[str, str], _Prediction]]:
    """Every configuration, every item: decode + tower + LLM at batch size 1 through `Pipeline.answer`."""
    from tqdm import tqdm

    items = data.loaded.items
    answers: dict[tuple[str, str], _Prediction] = {}
    stages: dict[str, float] = {}
    bar = tqdm(total=len(items) * len(configs), desc=f"bench --eval: {LOOP}", unit="item", disable=not progress)
    with bar, count_video_encodings(pipeline) as encodings:
        started = time.perf_counter()
        for config in configs:
            pruner = pipeline.pruner(config.method, **config.settings)
            for item in items:
                answer = pipeline.answer(item.question, video=_video(data, item), method=pruner, generation=generation)
                answers[(config.label, item.id)] = _Prediction(answer.text, answer.output_ids)
                _add(stages, answer.timings)
                bar.update()
        seconds = time.perf_counter() - started
    return EvalRunRow(LOOP, len(answers), seconds, encodings[0], stages, "answers"), answers


def _harness(pipeline: Pipeline, data: SyntheticBenchmark, configs: Sequence[BenchConfig], generation: Any,
             out: Path, batch_size: int | None, name: str = HARNESS,
             ) -> tuple[EvalRunRow, dict[tuple[str, str], _Prediction]]:
    """The harness with its defaults: `eval predict` for one configuration, `eval sweep`'s prediction step for
    several (run folders under `out`)."""
    from fastervlm.eval.predict import predict_items, prepare_run
    from fastervlm.eval.sweep import Cell, sweep_predict

    name = name if len(configs) == 1 else f"{name} (sweep of {len(configs)})"
    with count_video_encodings(pipeline) as encodings:
        started = time.perf_counter()
        if len(configs) == 1:
            pruner = pipeline.pruner(configs[0].method, **configs[0].settings)
            run = prepare_run(pipeline, data.loaded, data.data_root, pruner, generation, out=out)
            runs, summaries = [run], [predict_items(pipeline, run, data.loaded, data.data_root, pruner, generation,
                                                    progress=False, batch_size=batch_size)]
        else:
            cells = [Cell(config.method, dict(config.settings)) for config in configs]
            runs, summaries = sweep_predict(pipeline, [data.loaded], data.data_root, cells, generation, out=out,
                                            progress=False, batch_size=batch_size)
        seconds = time.perf_counter() - started
    records = {(config.label, rid): record for config, run in zip(configs, runs)
               for rid, record in run.predictions().items()}
    stages: dict[str, float] = {}
    for summary in summaries:  # work shared within the pass is counted on its first configuration only
        _add(stages, summary.stage_seconds)
    predictions = {key: _Prediction(r.get("pred"), r.get("output_ids")) for key, r in records.items()}
    errors = sum(1 for r in records.values() if r.get("error"))
    row = EvalRunRow(name, len(records), seconds, encodings[0], stages, "harness summary", errors=errors)
    return row, predictions


def _add(total: dict[str, float], timings: dict[str, float]) -> None:
    for stage in PIPELINE_STAGES:
        if stage in timings:
            total[stage] = total.get(stage, 0.0) + timings[stage]


def _compare(harness: EvalRunRow, answers: dict[tuple[str, str], _Prediction],
             predictions: dict[tuple[str, str], _Prediction]) -> None:
    """Count the harness's predictions that equal the loop's (text, and output ids when recorded)."""
    same = 0
    for key, ours in answers.items():
        theirs = predictions.get(key)
        if theirs is not None and theirs.text == ours.text and theirs.output_ids in (None, ours.output_ids):
            same += 1
    harness.identical = same

