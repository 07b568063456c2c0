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
    check_max_new_tokens,
    generation_settings,
    load_model,
    method_settings,
)

DEMO_QUESTION = "What is moving in the video?"
DEMO_REDUCTION = 0.9


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
                        "kept_indices, prompt_tokens, timings, ...) instead of text")
    answer.set_defaults(handler=run_answer)

    demo = subparsers.add_parser("demo", help="run the pipeline on an embedded tiny checkpoint and a synthetic video",
                                 description="No downloads: writes a tiny random Video-LLaVA checkpoint (real on-disk "
                                 "format) and a synthetic video into the cache, then answers with and without pruning.")
    demo.add_argument("--reduction", type=float, default=DEMO_REDUCTION, help="pruning ratio to compare with none (default %(default)s)")
    demo.add_argument("--max-new-tokens", type=int, default=24, help="answer length bound (default %(default)s)")
    demo.add_argument("--cache-dir", help="where the tiny checkpoint and video go (default $FASTERVLM_CACHE or ~/.cache/fastervlm)")
    demo.add_argument("--json", action="store_true", help="print the two answers as JSON")
    demo.set_defaults(handler=run_demo)


def run_answer(args: argparse.Namespace) -> int:
    method, settings = method_settings(args)
    generation = generation_settings(args)
    pipeline = load_model(args)
    result = pipeline.answer(args.question, video=args.video, image=args.image, method=method,
                             generation=generation, flip=args.flip, **settings)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.text)
        print(_summary(result), file=sys.stderr)
    return 0


def _summary(result: Any) -> str:
    """One line: method, visual tokens, prompt length, time to first token."""
    method = result.method.get("method")
    ttft = result.time_to_first_token
    return (f"[{method}] visual tokens {result.visual_tokens}, prompt {result.prompt_tokens} tokens, "
            f"{len(result.output_ids)} generated, time to first token {ttft * 1000:.1f} ms")


def run_demo(args: argparse.Namespace) -> int:
    import fastervlm
    from fastervlm.media import write_synthetic_video
    from fastervlm.models.base import GenerationSettings
    from fastervlm.tiny import default_cache_dir, ensure_tiny_checkpoint

    check_max_new_tokens(args.max_new_tokens)
    cache = default_cache_dir() if args.cache_dir is None else __import__("pathlib").Path(args.cache_dir)
    print(f"tiny checkpoint: {ensure_tiny_checkpoint(cache_dir=cache)}", file=sys.stderr)
    pipeline = fastervlm.load(ensure_tiny_checkpoint(cache_dir=cache), device="cpu")
    video = write_synthetic_video(cache / "demo.mp4")
    frames = pipeline.frames(video=video)
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens)
    results = {
        "none": pipeline.answer_frames([frames], [DEMO_QUESTION], pipeline.pruner("none"), generation)[0],
        f"fastervlm r={args.reduction}": pipeline.answer_frames(
            [frames], [DEMO_QUESTION], pipeline.pruner("fastervlm", reduction=args.reduction), generation)[0],
    }
    if args.json:
        print(json.dumps({name: r.to_json() for name, r in results.items()}))
        return 0
    print(f"video: {video} (frames {frames.frame_indices})\nquestion: {DEMO_QUESTION}")
    for name, result in results.items():
        print(f"\n{name}\n  answer: {result.text!r}\n  {_summary(result)}")
        if result.kept_indices is not None and result.visual_tokens < frames.pixels.shape[0] * pipeline.num_patches:
            print(f"  kept patches of frame 0: {result.kept_indices[0]}")
    print("\n(the tiny model is random: its answers are noise; the token counts and timings are the point)")
    return 0
