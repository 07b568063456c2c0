"""How much greedy answers depend on the batch they are answered in: `python -m fastervlm.bench.batching`.

Answers a synthetic benchmark (every visual token kept) in batches of each size, as `eval predict` batches them, and
prints per batch size: how many answers differ from answering each item alone (batch 1), from which generated token,
and how far the prefill's last-token logits of the same prompts are from batch 1's (max |difference|). `--rows-alone`
runs the same with each sequence's attention computed alone (`models/attention.py`), which shows the part of the
difference the attention makes; the rest comes from the matrix products (docs/evaluation.md, "What batching
changes"). The demo's tiny checkpoint by default; `--geometry video-llava-7b` builds Video-LLaVA-7B's widths in
memory with `--llm-layers` / `--vision-layers`. `--ops` measures the two batch-dependent ops alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fastervlm.bench.configs import ModelSource
from fastervlm.bench.synthetic import VideoShape, write_synthetic_benchmark
from fastervlm.eval.benchmarks import video_path
from fastervlm.methods import baseline_method
from fastervlm.models.attention import rows_alone
from fastervlm.llm import left_padded
from fastervlm.models.base import GenerationSettings
from fastervlm.prompts import build_prompts


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
    """Answer videos x questions items at each batch size (batch 1 first, the reference), as `eval predict` does
    (each video's prompt prefix shared), or with `rows` each prompt prefilled whole, each row's attention alone."""
    pipeline = (replace(source, share_prefix=False) if rows else source).build()
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
                answers += [a.output_ids for a in pipeline.ask(samples[chunk], texts[chunk], pruner, generation)]
                logits += prefill_logits(pipeline.adapter, samples[chunk], texts[chunk])
            results[size] = (answers, logits, time.perf_counter() - started)
    return [_row(size, results[1], results[size]) for size in sorted(results)]


def prefill_logits(adapter: Any, samples: list[Any], questions: list[str]) -> list[torch.Tensor]:
    """The last prompt token's logits of each sample, from one forward over the left-padded batch of whole prompts
    (positions counted from each row's first real token, as the LLM stage counts them)."""
    from transformers import DynamicCache

    with torch.inference_mode():
        batch = left_padded(adapter, build_prompts(adapter, questions, samples))
        logits = adapter.forward_llm(batch.embeds, batch.attention_mask, batch.positions, DynamicCache(), batch.side)
    return [row.float().cpu() for row in logits]


def _row(size: int, reference: tuple, batched: tuple) -> BatchRow:
    (ids_1, logits_1, _), (ids_b, logits_b, seconds) = reference, batched
    firsts = [next((n for n, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
              for x, y in zip(ids_1, ids_b) if x != y]
    gap = max(float((a - b).abs().max()) for a, b in zip(logits_1, logits_b))
    return BatchRow(size, len(firsts), len(ids_1), sorted(firsts), gap, seconds)


# ----- the two ops, alone ------------------------------------------------------------------------------------------
MATMUL_WIDTHS = ((64, 64), (64, 384), (4096, 4096), (4096, 11008), (11008, 4096))
"""(in, out) widths of the demo checkpoint's LLM (64 wide, 384 tokens) and of Video-LLaVA-7B's (4096, 11008)."""


def matmul_rows(widths: tuple[int, int], most: int = 16) -> tuple[list[int], list[int]]:
    """The row counts M (1..most) for which a Linear gives its first row the same bits as with M = 1, and as with
    M = 2: a batch of M sequences is a product with M rows in every decode step."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(widths[1], widths[0], generator=generator) / widths[0] ** 0.5
    rows = torch.randn(most, widths[0], generator=generator)
    with torch.inference_mode():
        first = {m: torch.nn.functional.linear(rows[:m], weight)[0] for m in range(1, most + 1)}
    return ([m for m in first if torch.equal(first[m], first[1])], [m for m in first if torch.equal(first[m], first[2])])


def matmul_prefill(widths: tuple[int, int], rows: int = 300, batch: int = 4) -> float:
    """Max |difference| of a prefill's product for `rows` rows alone and inside `batch` times as many rows."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(widths[1], widths[0], generator=generator) / widths[0] ** 0.5
    x = torch.randn(rows * batch, widths[0], generator=generator)
    with torch.inference_mode():
        return float((torch.nn.functional.linear(x[:rows], weight) - torch.nn.functional.linear(x, weight)[:rows]).abs().max())


def attention_padding(heads: int, head_dim: int, keys: int, pad: int) -> tuple[float, float]:
    """Max |difference| of one sequence's attention (prefill, one decode query) alone and inside a batch where it
    is left-padded by `pad` positions with a mask, as transformers calls SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 1, True
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, keys, head_dim, generator=generator) for _ in range(3))
    padded = [torch.cat([torch.zeros(1, heads, pad, head_dim), x], 2) for x in (q, k, v)]
    mask = torch.ones(keys + pad, keys + pad, dtype=torch.bool).tril()
    mask[:, :pad] = False
    gaps = []
    for rows in (slice(None), slice(-1, None)):  # the prefill's queries, then a decode step's one query
        alone, _ = sdpa_attention_forward(module, q[:, :, rows], k, v, None)
        batched, _ = sdpa_attention_forward(module, padded[0][:, :, rows], padded[1], padded[2], mask[None, None, rows])
        gaps.append(float((alone - batched[:, -alone.shape[1]:]).abs().max()))
    return gaps[0], gaps[1]


def ops_tables() -> str:
    """Both ops measured alone, as Markdown."""
    lines = ["| Linear (in -> out) | rows M giving row 0 the bits of M = 1 | ... of M = 2 | 300 rows alone vs inside "
             "1200: max abs difference |", "|---|---|---|---|"]
    for widths in MATMUL_WIDTHS:
        same_1, same_2 = matmul_rows(widths)
        lines.append(f"| {widths[0]} -> {widths[1]} | {_spans(same_1)} | {_spans(same_2)} | {matmul_prefill(widths):.3g} |")
    lines += ["", "| SDPA heads x dim, keys | left padding | max abs difference, prefill | one decode query |",
              "|---|---|---|---|"]
    for heads, dim in ((4, 16), (32, 128)):
        for pad in (1, 40):
            prefill, decode = attention_padding(heads, dim, 600, pad)
            lines.append(f"| {heads} x {dim}, 600 | {pad} | {prefill:.3g} | {decode:.3g} |")
    return "\n".join(lines)


def _spans(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][-1] + 1:
            spans[-1].append(n)
        else:
            spans.append([n])
    return ", ".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in spans)


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
    parser.add_argument("--ops", action="store_true", help="measure the two ops alone instead: a Linear's row by the "
                        "number of rows in the product, SDPA with and without left padding")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ops:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
        print(ops_tables())
        return 0
    source = (ModelSource.video_llava_7b(args.llm_layers, args.vision_layers) if args.geometry else ModelSource.tiny())
    rows = measure(source, args.batch_sizes, videos=args.videos, questions=args.questions,
                   max_new_tokens=args.max_new_tokens, rows=args.rows_alone)
    print(f"{source.describe()}, {args.videos} videos x {args.questions} questions, {args.max_new_tokens} new tokens, "
          f"greedy, fp32, {torch.get_num_threads()} threads, attention {'row by row' if args.rows_alone else 'batched'}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
