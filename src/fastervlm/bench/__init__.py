"""Speed, memory and FLOPs of pruning configurations, measured as data (`fastervlm bench` prints it).

    from fastervlm.bench import ModelSource, default_configs, run_benchmark, check_targets, plot
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
- speedups over the unpruned row (the registry's baseline method).
Plus the [CLS] extraction side by side where the model family has a reference (`models.base.SupportsEagerReference`):
our tower pass (SDPA, stops at the feature layer, one [CLS] row from its q/k) against the original's (every layer
eager, every attention map returned). Everything about the model is read through the adapter contract.

The package: configs (what is measured), runner (the schedule and the worker processes), measure (one worker's
measurements), meter (peak memory), results (rows, speedups), targets (the issues' targets), plot.
"""

from fastervlm.bench.configs import (DEFAULT_REDUCTIONS, PIPELINE_STAGES, QUESTION, SEED_REDUCTIONS, BenchConfig,
                                     ModelSource, check_budgets, check_configs, check_run_settings, default_configs)
from fastervlm.bench.plot import plot
from fastervlm.bench.results import BenchResult, BenchRow, ExtractionRow, Memory, Stat
from fastervlm.bench.runner import run_benchmark
from fastervlm.bench.targets import TARGET_MIN_WIDTH, TARGET_REDUCTION, Target, check_targets, result_json

__all__ = ["DEFAULT_REDUCTIONS", "PIPELINE_STAGES", "QUESTION", "SEED_REDUCTIONS", "TARGET_MIN_WIDTH", "TARGET_REDUCTION", "BenchConfig",
           "BenchResult", "BenchRow", "ExtractionRow", "Memory", "ModelSource", "Stat", "Target", "check_budgets", "check_configs",
           "check_run_settings", "check_targets", "default_configs", "plot", "result_json", "run_benchmark"]
