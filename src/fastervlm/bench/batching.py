"""How much greedy answers depend on the batch they are answered in: `python -m fastervlm.bench.batching`.

Answers a synthetic benchmark (every visual token kept) in batches of each size, as `eval predict` batches them, and
prints per batch size: how many answers differ from answering each item alone (batch 1), from which generated token,
and how far the prefill's last-token logits of the same prompts are from batch 1's (max |difference|). `--rows-alone`
runs the same with each sequence's attention computed alone (`models/attention.py`), which shows the part of the
difference the attention makes; the rest comes from the matrix products (docs/evaluation.md, "What batching
changes"). The demo's tiny checkpoint by default; `--geometry video-llava-7b` builds Video-LLaVA-7B's widths in
memory with `--llm-layers` / `--vision-layers`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastervlm.bench.configs import ModelSource
from fastervlm.bench.synthetic import VideoShape, write_synthetic_benchmark
from fastervlm.engine import build_prompts
from fastervlm.eval.benchmarks import video_path
from fastervlm.methods import baseline_method
from fastervlm.models.attention import rows_alone
from fastervlm.models.base import GenerationSettings


@dataclass
class BatchRow:
    """One batch size against batch 1."""

    batch_size: int
    differing: int
    items: int
    first_tokens: list[int]
    """The first generated token at which each differing answer departs from batch 1's."""
    max_logit_difference: float
    seconds: float


def measure(source: ModelSource, batch_sizes: list[int], *, videos: int, questions: int, max_new_tokens: int,
            rows: bool = False) -> list[BatchRow]:
    """Answer videos x questions items at each batch size (batch 1 first, the reference)."""
    pipeline = source.build()
    pruner = pipeline.pruner(baseline_method())  # every visual token
    with tempfile.TemporaryDirectory(prefix="fastervlm-batching-") as scratch:
        data = write_synthetic_benchmark(scratch, videos=videos, questions=questions, shape=VideoShape(seconds=2.0))
        items = data.loaded.items
        prepared = {}
        for item in items:
            if item.video_name not in prepared:
                frames = pipeline.frames(video=video_path(data.loaded.benchmark, data.data_root, item))
                prepared[item.video_name] = pipeline.prepare(pipeline.encode(frames, [pruner]), pruner)
    order = [items[(n * 17) % len(items)] for n in range(len(items))]  # batches mix videos, as eval's queues do
    samples = [prepared[item.video_name] for item in order]
    texts = [item.question for item in order]
    generation = GenerationSettings(max_new_tokens=max_new_tokens)
    results = {}
    with rows_alone(pipeline.adapter.llm) if rows else nullcontext():
        for size in sorted(set([1, *batch_sizes])):
            started = time.perf_counter()
            answers, logits = [], []
            for start in range(0, len(order), size):
                chunk = slice(start, start + size)
                answers += [a.output_ids for a in pipeline.answer_prepared(samples[chunk], texts[chunk], pruner, generation)]
                logits += prefill_logits(pipeline.adapter, samples[chunk], texts[chunk])
            results[size] = (answers, logits, time.perf_counter() - started)
    return [_row(size, results[1], results[size]) for size in sorted(results)]


def prefill_logits(adapter: Any, samples: list[Any], questions: list[str]) -> list[torch.Tensor]:
    """The last prompt token's logits of each sample, from one forward over the left-padded batch (positions counted
    from each row's first real token, as generate counts them)."""
    with torch.inference_mode():
        prompts = build_prompts(adapter, questions, [sample.visual for sample in samples])
        positions = (prompts.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = adapter.llm(inputs_embeds=prompts.embeds, attention_mask=prompts.attention_mask, position_ids=positions,
                          logits_to_keep=1)
    return [row[-1].float().cpu() for row in out.logits]


def _row(size: int, reference: tuple, batched: tuple) -> BatchRow:
    (ids_1, logits_1, _), (ids_b, logits_b, seconds) = reference, batched
    firsts = [next((n for n, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
              for x, y in zip(ids_1, ids_b) if x != y]
    gap = max(float((a - b).abs().max()) for a, b in zip(logits_1, logits_b))
    return BatchRow(size, len(firsts), len(ids_1), sorted(firsts), gap, seconds)


def table(rows: list[BatchRow]) -> str:
    lines = ["| batch size | answers that differ from batch 1 | first differing token | max abs prefill logit "
             "difference | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        tokens = ", ".join(map(str, r.first_tokens)) or "-"
        lines.append(f"| {r.batch_size} | {r.differing} of {r.items} | {tokens} | {r.max_logit_difference:.3g} | "
                     f"{r.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastervlm.bench.batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", choices=["video-llava-7b"], help="real widths built in memory (default: the "
                        "demo's tiny checkpoint)")
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--questions", type=int, default=16, help="per video")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rows-alone", action="store_true", help="each sequence's attention computed alone")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = (ModelSource.video_llava_7b(args.llm_layers, args.vision_layers) if args.geometry else ModelSource.tiny())
    rows = measure(source, args.batch_sizes, videos=args.videos, questions=args.questions,
                   max_new_tokens=args.max_new_tokens, rows=args.rows_alone)
    print(f"{source.describe()}, {args.videos} videos x {args.questions} questions, {args.max_new_tokens} new tokens, "
          f"greedy, fp32, {torch.get_num_threads()} threads, attention {'row by row' if args.rows_alone else 'batched'}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
