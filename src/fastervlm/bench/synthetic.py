"""A synthetic video-QA benchmark in the real on-disk schema, for `fastervlm bench --eval`.

    data = write_synthetic_benchmark(folder, videos=4, questions=8, shape=VideoShape(480, 360, seconds=10))
    data.loaded.items, data.data_root, data.describe()

The files are what `eval predict --benchmarks msvd --data-root <folder>` reads: `MSVD_Zero_Shot_QA/test_q_1k.json`
and `test_a_1k.json` (lists of {video_name, question, question_id} and {answer, type, question_id}, ids
`v_<video>_<n>`, a video's questions next to each other as in the seed's MSVD file) and one H.264 MP4 per video
under `videos/`. Only the files are synthetic; the benchmark definition is the packaged MSVD one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fastervlm.errors import FasterVLMError
from fastervlm.eval.benchmarks import LoadedBenchmark, get_benchmark, load_items

BENCHMARK = "msvd"
"""The packaged benchmark whose layout the synthetic files follow (MSVD-QA: ~29 questions per short clip)."""
QUESTIONS = (
    "what is the man doing?",
    "who is cutting the vegetables?",
    "what is the woman putting into the pan?",
    "what are the two people playing on the field in the rain?",
    "where is the dog running?",
    "what does the child pick up from the table before leaving the room?",
    "how many people are dancing?",
    "what is the cat playing with?",
    "who is riding the horse along the beach at sunset?",
    "what is being poured?",
    "what color is the car that drives past the camera?",
    "what is the person on the left holding in both hands?",
)
"""MSVD-style questions of different lengths, so that a batch of prompts needs padding."""
ANSWERS = ("cooking", "man", "oil", "football", "park", "ball", "three", "yarn", "woman", "water", "red", "phone")


@dataclass(frozen=True)
class VideoShape:
    """The synthetic videos: frame size, duration, frame rate and keyframe interval (H.264, 2 B-frames)."""

    width: int = 480
    height: int = 360
    seconds: float = 10.0
    fps: int = 30
    gop: int = 60

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    def check(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise FasterVLMError(f"--size {self.width}x{self.height}: width and height must be even and at least 16.")
        if self.fps < 1 or self.frames < 8:
            raise FasterVLMError(f"--duration {self.seconds:g} at {self.fps} fps gives {self.frames} frames; the "
                                 "model samples 8, so give at least 8 frames (a longer --duration or a higher --fps).")

    def describe(self) -> str:
        return (f"{self.width}x{self.height}, {self.seconds:g} s at {self.fps} fps ({self.frames} frames), H.264 "
                f"with B-frames, a keyframe every {self.gop} frames")


@dataclass
class SyntheticBenchmark:
    """The written benchmark: where it is, its items, and what its videos are."""

    data_root: Path
    loaded: LoadedBenchmark
    shape: VideoShape
    videos: int
    questions_per_video: int

    def describe(self) -> str:
        return (f"synthetic {self.loaded.benchmark.title}-like benchmark: {self.videos} videos x "
                f"{self.questions_per_video} questions = {len(self.loaded.items)} items; videos "
                f"{self.shape.describe()}")


def _question(number: int) -> str:
    """The number-th question of a video (distinct within a video however many are asked)."""
    text = QUESTIONS[number % len(QUESTIONS)]
    rounds = number // len(QUESTIONS)
    return text if rounds == 0 else f"{text.rstrip('?')} this time ({rounds + 1})?"


def check_size(videos: int, questions: int, shape: VideoShape) -> None:
    """Refuse a benchmark that cannot be written (callers check before they build a model)."""
    if videos < 1 or questions < 1:
        raise FasterVLMError(f"--videos and --questions must be at least 1 (got {videos} and {questions}).")
    shape.check()


def write_synthetic_benchmark(folder: str | Path, *, videos: int, questions: int,
                              shape: VideoShape = VideoShape()) -> SyntheticBenchmark:
    """Write `videos` videos with `questions` questions each under `folder` (the --data-root) and load them."""
    from fastervlm.bench.decode import write_benchmark_video

    check_size(videos, questions, shape)
    benchmark = get_benchmark(BENCHMARK)
    root = Path(folder)
    video_dir = benchmark.videos(root)
    video_dir.mkdir(parents=True, exist_ok=True)
    entries, answers = [], []
    for video in range(videos):
        name = f"synthetic{video:03d}"
        write_benchmark_video(video_dir / f"{name}.mp4", seconds=shape.seconds, width=shape.width,
                              height=shape.height, fps=shape.fps, gop=shape.gop, seed=video)
        for number in range(questions):
            question_id = f"v_{name}_{number}"
            entries.append({"video_name": name, "question": _question(number), "question_id": question_id})
            answers.append({"answer": ANSWERS[number % len(ANSWERS)], "type": 0, "question_id": question_id})
    questions_file, answers_file = benchmark.file_pairs[0]
    (benchmark.root(root) / questions_file).write_text(json.dumps(entries))
    (benchmark.root(root) / answers_file).write_text(json.dumps(answers))
    return SyntheticBenchmark(root, load_items(benchmark, root), shape, videos, questions)
