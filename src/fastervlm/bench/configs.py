"""What a benchmark measures: configurations (a method and its settings), the model source, the run settings."""

from __future__ import annotations

from collections.abc import Sequence
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastervlm.errors import BudgetError, FasterVLMError
from fastervlm.timing import TTFT_STAGES

if TYPE_CHECKING:
    from fastervlm.pipeline import Pipeline
    from fastervlm.tiny import TinySpec

SEED_REDUCTIONS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
"""Video-LLaVA: 2048 / 1536 / 1024 / 512 / 208 / 104 / 0 visual tokens, the seed table's "# Token" column."""
DEFAULT_REDUCTIONS = (0.5, 0.9)
"""What `fastervlm bench` measures when no budget is given: a quick check (1024 and 208 tokens on Video-LLaVA,
the latter the targets' budget); pass SEED_REDUCTIONS (`--reductions 0 0.25 0.5 0.75 0.9 0.95 1`) for the
seed's whole column."""
PIPELINE_STAGES = ("decode_video", *TTFT_STAGES, "llm_decode")
QUESTION = "What is happening in the video?"
SYNTHETIC_VIDEO = "synthetic 320x240 H.264 clip, 48 frames (tiny.video.write_synthetic_video)"


@dataclass
class BenchConfig:
    """One configuration: a registered method and its settings (as `create_pruner` takes them)."""

    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.settings.items())])


def default_configs(
    methods: Sequence[str] | None = None,
    reductions: Sequence[float] = DEFAULT_REDUCTIONS,
    *,
    keeps: Sequence[int] | None = None,
    method_settings: dict[str, dict[str, Any]] | None = None,
    baseline: bool = True,
) -> list[BenchConfig]:
    """The unpruned row (the registry's baseline; unless `baseline` is False) first, then every method (default:
    the featured ones) at every budget (reductions, or per-frame keeps when given). Budgets out of range are
    refused here, before any model is built (keeps are checked against the model's patch count by check_configs
    once it is known)."""
    from fastervlm.methods import baseline_method, featured_methods

    methods = featured_methods() if methods is None else methods
    budgets = [{"keep": k} for k in keeps] if keeps is not None else [{"reduction": r} for r in reductions]
    extra = method_settings or {}
    configs = [BenchConfig(baseline_method())] * baseline + [
        BenchConfig(method, {**budget, **extra.get(method, {})}) for method in methods for budget in budgets
    ]
    check_budgets(configs)
    return configs


def check_budgets(configs: Sequence[BenchConfig]) -> None:
    """Refuse a reduction outside [0, 1] before any model is built, naming the configuration (the same rule as the
    methods apply); keeps wait for the model's patch count (`check_configs`)."""
    from fastervlm.selection import resolve_keep

    for config in configs:
        reduction = config.settings.get("reduction")
        if reduction is None:
            continue
        try:
            resolve_keep(0, reduction=reduction)
        except BudgetError as err:
            raise BudgetError(f"bench {config.label}: {err.template}") from None


def check_configs(pipeline: Pipeline, configs: Sequence[BenchConfig]) -> None:
    """Refuse, once the model is built and before any worker starts, a configuration it cannot run (a keep above
    its patches per frame, FastV's layer past its LLM's depth, a [CLS] method without [CLS]), naming it."""
    for config in configs:
        try:
            pipeline.check_method(pipeline.pruner(config.method, **config.settings))
        except BudgetError as err:
            raise BudgetError(f"bench {config.label}: {err.template}") from None


@dataclass(frozen=True)
class ModelSource:
    """What to benchmark, in a form a fresh process can rebuild: a checkpoint folder, or a tiny/real-width
    geometry built in memory (`tiny.build_adapter`)."""

    checkpoint: str | None = None
    video_tower: str | None = None
    geometry: TinySpec | None = None
    geometry_name: str = ""
    device: str | None = None
    share_prefix: bool = True
    static_cache: bool | None = None
    """The LLM stage's options (`fastervlm.llm.TransformersLLM`)."""
    backend: str = "transformers"
    engine_settings: tuple[str, ...] | None = None
    """Where the LLM stage runs (`fastervlm.load`'s backend) and the serving engine's KEY=VALUE options."""

    @staticmethod
    def tiny(device: str | None = "cpu") -> ModelSource:
        """The demo's tiny checkpoint (`--model tiny`)."""
        from fastervlm.demo import tiny_checkpoint

        return ModelSource(checkpoint=str(tiny_checkpoint()), device=device)

    @staticmethod
    def video_llava_7b(llm_layers: int, vision_layers: int, device: str | None = "cpu") -> ModelSource:
        """Video-LLaVA-7B's widths, heads and token counts with fewer layers, random weights, built in memory."""
        from fastervlm.tiny import TinySpec

        if llm_layers < 1 or vision_layers < 2:
            raise FasterVLMError("--llm-layers must be at least 1 and --vision-layers at least 2 (the feature layer is "
                                 "the penultimate one).")
        return ModelSource(geometry=TinySpec.video_llava_7b(llm_layers=llm_layers, vision_layers=vision_layers),
                           geometry_name=f"random weights at video-llava-7b geometry, {llm_layers} LLM / "
                                         f"{vision_layers} vision layers",
                           device=device)

    def describe(self) -> str:
        """The model in the tables' header: a checkpoint's name (a tiny one says its weights are random)."""
        from fastervlm.tiny.identity import model_title

        if self.geometry is not None:
            return self.geometry_name or f"random weights at in-memory geometry {self.geometry}"
        return model_title(self.checkpoint)

    def dtype_name(self, device: torch.device) -> str:
        if device.type == "cpu":
            return "float32"
        return "float16" if self.geometry is not None else "the checkpoint's dtype"

    def build(self) -> Pipeline:
        """Load (or build) the pipeline in fp32 on the CPU, the checkpoint's dtype on CUDA."""
        from fastervlm.pipeline import Pipeline, load, resolve_device

        from fastervlm.llm import TransformersLLM

        device = resolve_device(self.device)
        llm = {"share_prefix": self.share_prefix, "static_cache": self.static_cache}
        if self.geometry is None:
            options = {"video_tower": self.video_tower} if self.video_tower else {}
            if self.backend != "transformers":
                options.update(backend=self.backend, engine_settings=list(self.engine_settings or ()))
            return load(self.checkpoint, device=device, dtype=torch.float32 if device.type == "cpu" else None,
                        **llm, **options)
        if self.backend != "transformers":
            raise FasterVLMError(f"--backend {self.backend} serves a checkpoint folder's language model; a --geometry "
                                 "model lives only in memory: give --model.")
        from fastervlm.tiny import build_adapter

        dtype = torch.float32 if device.type == "cpu" else torch.float16
        name = re.sub(r"[^A-Za-z0-9.]+", "-", self.geometry_name).strip("-") or "geometry"  # a folder name
        adapter = build_adapter(self.geometry, device, dtype)
        return Pipeline(adapter, Path(name), TransformersLLM(adapter, **llm))



def check_run_settings(warmup: int, repeats: int, max_new_tokens: int) -> None:
    if repeats < 1 or warmup < 0 or max_new_tokens < 1:
        raise FasterVLMError("--repeats and --max-new-tokens must be at least 1, --warmup at least 0.")

