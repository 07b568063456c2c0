"""What one worker measures: a pipeline configuration (stage times, memory, KV cache, FLOPs), or a way of getting
the [CLS] attention out of the tower (ours, or the original's eager pass with every map)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fastervlm.bench.configs import PIPELINE_STAGES, BenchConfig
from fastervlm.bench.meter import PeakMeter
from fastervlm.bench.results import BenchRow, ExtractionRow, Stat
from fastervlm.methods import is_baseline
from fastervlm.timing import StageTimer, time_to_first_token

if TYPE_CHECKING:
    from fastervlm.pipeline import Pipeline


@dataclass(frozen=True)
class Task:
    kind: str  # "config", "ours" or "reference"
    config: BenchConfig | None
    video: str
    question: str
    max_new_tokens: int
    isolated: bool

    @property
    def label(self) -> str:
        return self.config.label if self.config is not None else f"[CLS] extraction: {self.kind}"


def _cache_bytes(cache: Any) -> int | None:
    """Bytes held by a transformers Cache (its layers' key and value tensors)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    tensors = [getattr(layer, name, None) for layer in layers for name in ("keys", "values")]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@contextmanager
def _kv_probe(pipeline: Pipeline) -> Iterator[list[int | None]]:
    """Records the KV-cache size after the prefill: the cache after the last LLM forward of more than one token
    (a prefill is a shared prefix, then the question's tokens; decoding steps take one token each)."""
    sizes: list[int | None] = []

    def hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if kwargs["inputs_embeds"].shape[1] > 1:
            sizes[:] = [_cache_bytes(getattr(output, "cache", None))]

    handle = pipeline.adapter.llm.register_forward_hook(hook, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def make_measurer(pipeline: Pipeline, task: Task) -> _ConfigMeasurer | _ExtractionMeasurer:
    return _ConfigMeasurer(pipeline, task) if task.kind == "config" else _ExtractionMeasurer(pipeline, task)


class _ConfigMeasurer:
    """Runs one configuration through the pipeline, one run per command, and makes its row."""

    def __init__(self, pipeline: Pipeline, task: Task) -> None:
        from fastervlm.models.base import GenerationSettings

        assert task.config is not None
        self.pipeline, self.task, self.config = pipeline, task, task.config
        self.pruner = pipeline.pruner(self.config.method, **self.config.settings)
        self.generation = GenerationSettings(max_new_tokens=task.max_new_tokens)
        self.meter = PeakMeter(pipeline.adapter.device, task.isolated)
        self.timings: list[dict[str, float]] = []
        self.answer: Any = None
        self.kv: int | None = None

    def command(self, command: str) -> BenchRow | None:
        if command == "result":
            return self.row()
        with torch.inference_mode(), self.meter.run():
            frames = self.pipeline.frames(video=self.task.video)
            with _kv_probe(self.pipeline) as kv:
                self.answer = self.pipeline.run([frames], [self.task.question], self.pruner, self.generation)[0]
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
            llm_prefill_flops=answer.llm_prefill_flops,
            baseline=is_baseline(self.pruner.settings()),
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

    def __init__(self, pipeline: Pipeline, task: Task) -> None:
        adapter = pipeline.adapter
        self.task, self.stream, self.device = task, adapter.stream, adapter.device
        self.layers_run = self.stream.layers_run
        self.pixels = pipeline.frames(video=task.video).pixels.unsqueeze(0).to(adapter.device, adapter.dtype)
        self.meter = PeakMeter(adapter.device, task.isolated)
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
        frames, tokens = self.pixels.shape[0] * self.pixels.shape[1], self.stream.tokens_per_frame + 1
        held = frames * attention.num_heads * (1 + tokens) * attention.head_dim * self.pixels.element_size()
        return torch.stack([tokens.cls_scores for tokens in encoded]), held

    def _reference(self, timer: StageTimer) -> int:
        """The stream's eager extraction; the [CLS] row is read inside it, so its scoring time is counted there."""
        with timer("encoder"):
            result = self.stream.eager_extraction(self.pixels)
        timer.add("cls_scoring", 0.0)
        self.scores, self.layers_run = result.cls_scores, result.layers_run
        return result.attention_bytes

    def row(self) -> ExtractionRow:
        reference = self.task.kind == "reference"
        difference = None
        if reference:
            with torch.inference_mode():
                ours = self._ours(StageTimer(self.device))[0]
            difference = float((self.scores.float() - ours.float()).abs().max())
        return ExtractionRow(
            name=self.task.kind,
            description=("every layer eager, all hidden states and attention maps returned, [CLS] row read from the "
                         "feature layer's map (the original)") if reference else
                        "SDPA, stops at the feature layer, [CLS] row from that layer's q/k (fastervlm)",
            layers_run=self.layers_run,
            encoder=Stat.of([t["encoder"] for t in self.timings]),
            cls_scoring=Stat.of([t["cls_scoring"] for t in self.timings]),
            attention_bytes=self.held, memory=self.meter.memory(), max_score_difference=difference,
        )


