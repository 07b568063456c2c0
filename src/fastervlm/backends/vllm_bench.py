"""`python -m fastervlm.backends.vllm_bench`: the LLM stage on vLLM against transformers' `generate` on the same
LLM and the same prompt embeddings (built by the engine's own stages), on a tiny random checkpoint with 64-wide
heads (the CPU engine refuses narrower ones). Prints one table: the engine's start, seconds and items/s for one
batch, the median time to first token, and whether the greedy ids are identical.

The tiny model is random and small, so the numbers show what the engine costs around a model (its start, its
per-request overhead, its scheduling), not what it gains on a 7B model on a GPU (docs/vllm.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

QUESTIONS = ["What happens?", "What is the person in red doing in the video now?", "Who?",
             "Describe the colours and the moving shapes in the video, one after the other.", "Why is it moving?",
             "Is it day or night?", "How many objects move from the left to the right of the frame?"]
FAMILIES = {"llama": "video_llava_original", "qwen2": "llava_onevision"}
"""Which tiny checkpoint stands for each language model: original-format Video-LLaVA, LLaVA-OneVision-hf (any
other transformers family, by its model_type, is written too)."""


Spec = TypeVar("Spec")


def with_head_dim_64(spec: Spec) -> Spec:
    """A tiny spec (`fastervlm.tiny`'s TinySpec, TinyHFSpec) with an LLM of 64-wide attention heads (width 128, 2
    heads; 1 key/value head where the spec has grouped-query attention): vLLM's CPU engine refuses the default's
    16-wide heads. Everything else is kept; every family's tiny writer takes it."""
    kv = {"llm_kv_heads": 1} if hasattr(spec, "llm_kv_heads") else {}
    return dataclasses.replace(spec, llm_width=128, llm_intermediate=256, llm_heads=2, **kv)  # type: ignore[type-var]


def write_checkpoint(family: str, folder: Path) -> Path:
    """The family's tiny checkpoint with 64-wide LLM heads, written into `folder`."""
    from fastervlm.tiny import TinySpec, write_tiny_checkpoint
    from fastervlm.tiny.hf import TinyHFSpec, write_tiny_hf_checkpoint

    if family == FAMILIES["llama"]:
        return write_tiny_checkpoint(folder, with_head_dim_64(TinySpec()))
    return write_tiny_hf_checkpoint(folder, family, with_head_dim_64(TinyHFSpec()))


def stage_prompts(pipeline: Any, questions: list[str], methods: list[Any], seed: int = 0) -> list[Any]:
    """Prompts built by the engine's own stages: a random video encoded once, each method's selection projected,
    one question each (methods and questions of different sizes give different lengths)."""
    from fastervlm.prompts import build_prompts

    adapter = pipeline.adapter
    video = np.random.default_rng(seed).integers(0, 256, (adapter.num_frames, 96, 128, 3), dtype=np.uint8)
    frames = pipeline.frames(pixels=adapter.preprocess(video))
    unique = list({id(method): method for method in methods}.values())
    tokens = pipeline.encode(frames, unique)
    prepared = {id(method): pipeline.prepare(tokens, method) for method in unique}
    with torch.inference_mode():
        return build_prompts(adapter, questions, [prepared[id(method)] for method in methods])


def unpadded(prompts: list[Any]) -> list[torch.Tensor]:
    """Each prompt's embeddings (what the engine takes)."""
    return [prompt.embeds for prompt in prompts]


def transformers_ids(pipeline: Any, prompts: list[Any], pruner: Any, settings: Any) -> list[list[int]]:
    """The transformers backend's greedy ids for these prompts in one batch, each prefilled whole (as the engine
    takes them)."""
    from fastervlm.llm import TransformersLLM

    return TransformersLLM(pipeline.adapter, share_prefix=False).generate(prompts, pruner, settings).ids


def _timed(run: Any, repeats: int) -> tuple[float, Any]:
    """Median wall seconds of `repeats` runs (after one warm-up run), and the last run's result."""
    run()
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def measure(family: str, prompts_count: int, new_tokens: int, repeats: int, settings: list[str]) -> list[dict]:
    """One row per path: transformers one prompt at a time, transformers one padded batch, vLLM one batch."""
    import fastervlm
    from fastervlm.backends.vllm import DecodingSettings, VLLMEngine
    from fastervlm.methods import baseline_method, create_pruner
    from fastervlm.models.base import GenerationSettings
    from fastervlm.models.generation import generation_config

    with tempfile.TemporaryDirectory(prefix="fastervlm-vllm-bench-") as scratch:
        path = write_checkpoint(family, Path(scratch))
        pipeline = fastervlm.load(path, device="cpu", dtype="float32")
        adapter, none = pipeline.adapter, create_pruner(baseline_method())
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(prompts_count)]
        prompts = stage_prompts(pipeline, questions, [none] * prompts_count)
        generation = GenerationSettings(max_new_tokens=new_tokens)
        config = generation_config(generation, adapter.tokenizer, adapter.generation_defaults)

        def transformers_batch() -> list[list[int]]:
            return transformers_ids(pipeline, prompts, none, generation)

        def transformers_each() -> list[list[int]]:
            return [transformers_ids(pipeline, [prompt], none, generation)[0] for prompt in prompts]

        rows = []
        seconds, reference = _timed(transformers_batch, repeats)
        rows.append({"path": f"transformers, one padded batch of {prompts_count}", "seconds": seconds,
                     "ttft": None, "same": prompts_count, "start": None})
        seconds, each = _timed(transformers_each, repeats)
        rows.insert(0, {"path": "transformers, one prompt at a time", "seconds": seconds, "ttft": None,
                        "same": sum(a == b for a, b in zip(each, reference)), "start": None})
        with VLLMEngine(path, adapter.llm_config, dtype=torch.float32, engine_settings=settings,
                         cache_dir=Path(scratch)) as backend:
            decoding = DecodingSettings.from_generation_config(config)
            seconds, results = _timed(lambda: backend.generate(unpadded(prompts), decoding), repeats)
            rows.append({"path": f"vLLM {backend.vllm_version}, one request batch of {prompts_count}",
                         "seconds": seconds, "ttft": statistics.median(r.ttft_s for r in results),
                         "same": sum(r.ids == ids for r, ids in zip(results, reference)), "start": backend.start_seconds})
        return rows


def table(rows: list[dict], prompts_count: int) -> str:
    """The measurements as a plain-text table."""
    header = ("path", "engine start s", "s / batch", "items/s", "median TTFT s", f"ids = batched transformers")
    lines = [(row["path"], "-" if row["start"] is None else f"{row['start']:.1f}", f"{row['seconds']:.3f}",
              f"{prompts_count / row['seconds']:.1f}", "-" if row["ttft"] is None else f"{row['ttft']:.3f}",
              f"{row['same']}/{prompts_count}") for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastervlm.backends.vllm_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", choices=sorted(FAMILIES), default="llama",
                        help="llama: tiny original-format Video-LLaVA (512 visual tokens); qwen2: tiny LLaVA-OneVision (73)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the batch (default 8)")
    parser.add_argument("--new-tokens", type=int, default=16, help="max new tokens per prompt (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the median is shown")
    parser.add_argument("--engine-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a vLLM engine option (repeatable); default: max_model_len=2048 enforce_eager=true "
                             "kv_cache_memory_bytes=256M")
    args = parser.parse_args(argv)
    settings = args.engine_setting or ["max_model_len=2048", "enforce_eager=true", "kv_cache_memory_bytes=256M"]
    rows = measure(FAMILIES[args.llm], args.prompts, args.new_tokens, args.repeats, settings)
    print(f"{args.llm} tiny LLM (64-wide heads), fp32, CPU, {torch.get_num_threads()} threads; "
          f"{args.prompts} prompts, greedy, up to {args.new_tokens} new tokens; median of {args.repeats} runs")
    print(table(rows, args.prompts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
