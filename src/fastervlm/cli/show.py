"""`fastervlm show`: a picture (and optionally an animation) of the patches a method kept in each sampled frame."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastervlm.cli.common import (add_method_arguments, add_model_arguments, check_before_loading, load_model,
                                  tiny_fallback)

QUESTION = "Describe the video."


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    show = subparsers.add_parser(
        "show", help="draw the sampled frames with the kept patches outlined and the [CLS] heatmap",
        description="Runs the model once on a video and draws the frames it saw in a grid: each frame as it is, the "
        "patches the method kept outlined and the pruned ones greyed, and below it the frame's [CLS] attention as a "
        "heatmap panel (normalised per frame), with a legend. Works for every method that acts before the LLM (a "
        "method that merges patches gets its frames unmarked, and the legend says so). --model tiny: the demo's "
        "tiny random model (the legend says so).")
    add_model_arguments(show, required=False)
    show.add_argument("--video", required=True, help="video file to sample the frames from")
    add_method_arguments(show)
    show.add_argument("--out", default="kept.png", help="picture to write: .svg or .pdf (vector, with a labelled colour "
                      "bar), or .png and any Pillow format (default %(default)s)")
    show.add_argument("--animation", metavar="FILE", help="also write the frames in motion to FILE (.gif or .mp4)")
    show.add_argument("--fps", type=float, default=2.0, help="frames per second of --animation (default %(default)s)")
    show.add_argument("--columns", type=int, default=4, help="frames per row of the grid (default %(default)s)")
    show.add_argument("--scale", type=int, help="draw each frame pixel this many times (default: frames at least 224 px)")
    show.add_argument("--question", default=QUESTION, help="question for the pass (methods that select before the "
                      "LLM do not depend on it; default %(default)r)")
    show.add_argument("--no-heatmap", action="store_true", help="leave out the [CLS] heatmap panels")
    show.add_argument("--seed", type=int, default=0, help="seed of a method that draws at random (default %(default)s)")
    show.add_argument("--flip", action="store_true", help="flip the frames horizontally (the original flips at random)")
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    from fastervlm.errors import FasterVLMError
    from fastervlm.models.base import GenerationSettings
    from fastervlm.show import Layout, check_showable, heatmap_scores, save_answer_picture, write_answer_animation

    tiny_fallback(args, "show")
    if args.columns < 1 or (args.scale is not None and args.scale < 1):
        raise FasterVLMError("--columns and --scale must be at least 1.")
    if not args.fps > 0:
        raise FasterVLMError(f"--fps is the animation's frames per second: above 0 (got {args.fps:g}).")
    _check_outputs(args)
    request = check_before_loading(args, decoding=False)
    check_showable(request.method)
    pipeline = load_model(args)
    pruner = pipeline.pruner(request.pruner)
    frames = pipeline.frames(video=args.video, flip=args.flip)
    answer = pipeline.run([frames], [args.question], pruner, GenerationSettings(max_new_tokens=1))[0]
    scores = answer.cls_scores
    if scores is None and not args.no_heatmap:
        scores = heatmap_scores(pipeline, frames)
    side = frames.pixels.shape[-1]
    layout = Layout(columns=args.columns, scale=args.scale or max(1, -(-224 // side)))
    draw = {"cls_scores": scores, "heatmap": not args.no_heatmap}
    out = Path(args.out)
    try:
        save_answer_picture(out, pipeline, frames, answer, layout=layout, **draw)
        if args.animation:
            write_answer_animation(args.animation, pipeline, frames, answer, fps=args.fps, **draw)
    except (OSError, ValueError) as err:
        raise FasterVLMError(f"cannot write the picture ({err}); check the output path and its extension.") from err
    print(f"{out}: {answer.visual_tokens} visual tokens kept "
          f"({answer.method.get('method')})" + (f"; animation {args.animation}" if args.animation else ""), file=sys.stderr)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an unwritable --out / --animation before the model runs, not after."""
    from PIL import Image

    from fastervlm.errors import FasterVLMError
    from fastervlm.show import VECTOR_SUFFIXES

    for flag, path in (("--out", args.out), ("--animation", args.animation)):
        if path is not None and not Path(path).parent.is_dir():
            raise FasterVLMError(f"{flag} {path}: the folder {Path(path).parent} does not exist; create it first.")
    suffix = Path(args.out).suffix.lower()
    if suffix not in Image.registered_extensions() and suffix not in VECTOR_SUFFIXES:
        raise FasterVLMError(f"--out {args.out}: Pillow cannot write {suffix or 'a file without an extension'}; "
                             "use a picture name such as kept.png, or kept.svg / kept.pdf for a vector picture.")
