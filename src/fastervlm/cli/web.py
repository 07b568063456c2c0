"""`fastervlm web`: the Gradio page (ask a video a question, compare configurations, browse eval results)."""

from __future__ import annotations

import argparse
import sys

from fastervlm.cli.common import (
    TINY_MODEL,
    add_generation_arguments,
    add_model_arguments,
    check_device,
    check_files,
    generation_settings,
    load_model,
    tiny_fallback,
)

DEFAULT_PORT = 7860


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fastervlm.web.settings import (
        DEFAULT_MAX_NEW_TOKENS,
        DEFAULT_MAX_QUESTION_CHARS,
        DEFAULT_MAX_UPLOAD_MB,
        DEFAULT_MAX_VIDEO_SECONDS,
    )

    parser = subparsers.add_parser(
        "web", help="serve the web demo (needs the [web] extra)",
        description="A local web page over the library: ask a video a question with and without pruning, see the "
        "kept tokens and the time saved, browse `fastervlm eval` results. Needs: pip install \"fastervlm[web]\".")
    add_model_arguments(parser, required=False)
    add_generation_arguments(parser, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    server.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest video upload in MB (default %(default)g)")
    server.add_argument("--max-video-seconds", type=float, default=DEFAULT_MAX_VIDEO_SECONDS,
                        help="longest video in seconds (default %(default)g)")
    server.add_argument("--max-question-chars", type=int, default=DEFAULT_MAX_QUESTION_CHARS, metavar="N",
                        help="longest question in characters (default %(default)s); the page says so for a longer one")
    server.add_argument("--runs", metavar="DIR", help="runs folder the results tab opens with (what `fastervlm eval "
                        "predict --out` wrote)")
    parser.epilog = "--model tiny: the embedded tiny model (random weights: the answers are noise; the page's title says so)."
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from fastervlm.errors import FasterVLMError

    tiny_fallback(args, "web")
    if importlib.util.find_spec("gradio") is None:  # not imported here: serve() sets its environment first
        raise FasterVLMError('fastervlm web needs Gradio: pip install "fastervlm[web]".')
    from fastervlm.web.app import serve
    from fastervlm.web.settings import WebSettings

    if args.max_upload_mb <= 0 or args.max_video_seconds <= 0 or args.max_question_chars < 1:
        raise FasterVLMError("--max-upload-mb, --max-video-seconds and --max-question-chars must be above 0.")
    if not 0 < args.port < 65536:
        raise FasterVLMError(f"--port {args.port} is not a port number: give one from 1 to 65535.")
    if args.runs and not Path(args.runs).is_dir():
        raise FasterVLMError(f"--runs {args.runs} is not a folder: give the folder `fastervlm eval predict --out` "
                             "wrote, or leave --runs out and pick one in the page's Results tab.")
    check_files(args)
    generation = generation_settings(args)
    check_device(args.device)
    settings = WebSettings(max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds,
                           max_question_chars=args.max_question_chars, generation=generation, flip=args.flip,
                           runs_dir=Path(args.runs) if args.runs else None)
    print(f"fastervlm web: loading {'the tiny random model' if args.model == TINY_MODEL else args.model} ...",
          file=sys.stderr)
    pipeline = load_model(args)
    if pipeline.adapter.media != "video":
        raise FasterVLMError(f"{args.model} is an {pipeline.adapter.media} model ({pipeline.adapter.family}); the web page "
                             "asks videos: use a video model, or `fastervlm answer --image` for images.")
    serve(pipeline, settings, host=args.host, port=args.port)
    return 0
