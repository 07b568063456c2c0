"""`fastervlm answer` (one question about one video or image) and `fastervlm demo` (the same on the tiny model)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fastervlm.cli.common import (
    add_generation_arguments,
    add_method_arguments,
    add_model_arguments,
    check_before_loading,
    check_max_new_tokens,
    load_model,
    say_model,
)

DEMO_REDUCTION = 0.9
DEMO_MAX_NEW_TOKENS = 24


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    answer = subparsers.add_parser("answer", help="answer a question about a video (or an image)",
                                   description="Answer one question about one video or image with a pruning method.")
    add_model_arguments(answer)
    media = answer.add_mutually_exclusive_group(required=True)
    media.add_argument("--video", help="video file (mp4, avi, mov, mkv, gif, ...)")
    media.add_argument("--image", help="image file, for image models (LLaVA-1.5)")
    answer.add_argument("--question", required=True, help="the question to ask")
    add_method_arguments(answer)
    add_generation_arguments(answer)
    answer.add_argument("--json", action="store_true", help="print one JSON object (answer, output_ids, visual_tokens, "
                        "kept_indices, prompt_tokens, timings, ...; README lists them) instead of text")
    answer.set_defaults(handler=run_answer)

    demo = subparsers.add_parser("demo", help="run the pipeline on an embedded tiny checkpoint and a synthetic video",
                                 description="No downloads: writes a tiny random Video-LLaVA checkpoint (real on-disk "
                                 "format) and a synthetic video into the cache, then answers with and without pruning "
                                 "and times both: one warm-up answer each, then interleaved timed runs (medians).")
    demo.add_argument("--reduction", type=float, default=DEMO_REDUCTION, help="pruning ratio to compare with no "
                      "pruning (default %(default)s)")
    demo.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS, help="answer length bound "
                      "(default %(default)s)")
    demo.add_argument("--repeats", type=int, default=None, metavar="N", help="timed runs per configuration "
                      "(default 7)")
    demo.add_argument("--cache-dir", help="where the tiny checkpoint and video go (default $FASTERVLM_CACHE or ~/.cache/fastervlm)")
    demo.add_argument("--json", action="store_true", help="print the two answers as JSON")
    demo.set_defaults(handler=run_demo)


def run_answer(args: argparse.Namespace) -> int:
    from fastervlm.tiny.identity import model_title

    request = check_before_loading(args)
    pipeline = load_model(args)
    result = pipeline.answer(args.question, video=args.video, image=args.image, method=request.pruner,
                             generation=request.generation, flip=args.flip)
    if args.json:
        print(json.dumps(result.to_json()))
        say_model(pipeline)
    else:
        print(result.text)
        print(_summary(result, model_title(pipeline.path)), file=sys.stderr)
    return 0


def _summary(result: Any, model: str) -> str:
    """One line: model, method, visual tokens, prompt length, time to first token."""
    method = result.method.get("method")
    ttft = result.time_to_first_token
    return (f"[{model} · {method}] visual tokens {result.visual_tokens}, prompt {result.prompt_tokens} tokens, "
            f"{len(result.output_ids)} generated, time to first token {ttft * 1000:.1f} ms")


def run_demo(args: argparse.Namespace) -> int:
    from fastervlm import demo
    from fastervlm.errors import FasterVLMError

    check_max_new_tokens(args.max_new_tokens)
    repeats = demo.REPEATS if args.repeats is None else args.repeats
    if repeats < 1:
        raise FasterVLMError(f"--repeats must be at least 1 (got {repeats}).")
    result = demo.run_demo(args.cache_dir, args.reduction, args.max_new_tokens, repeats=repeats)
    if args.json:
        print(json.dumps({row.label: {**row.answer.to_json(), "ttft_median": row.ttft.median,
                                      "llm_prefill_median": row.prefill.median} for row in result.rows}))
        return 0
    print(f"tiny checkpoint: {result.checkpoint}", file=sys.stderr)
    print(f"video: {result.video} (frames {result.frame_indices})\nquestion: {result.question}")
    for row in result.rows:
        print(f"\n{row.label}\n  answer: {row.answer.text!r}\n  visual tokens {row.answer.visual_tokens}, "
              f"prompt {row.answer.prompt_tokens} tokens, {len(row.answer.output_ids)} generated")
        print(f"  time to first token {_ms(row.ttft)}, of which LLM prefill {_ms(row.prefill)}")
        if row is not result.rows[0] and row.answer.kept_indices is not None:
            print(f"  kept patches of frame 0: {row.answer.kept_indices[0]}")
    print(f"\nspeedup in time to first token: x{result.speedup:.2f} (medians of {result.repeats} interleaved runs "
          "after one warm-up each)")
    print(f"note: {demo.TOY_NOTE}")
    return 0


def _ms(spread: Any) -> str:
    return f"{spread.median * 1000:.1f} ms (range {spread.low * 1000:.1f}-{spread.high * 1000:.1f})"
