"""How long sampling 8 frames takes: seek vs scan vs decord, on long generated videos, frames checked identical.

`run_decode_benchmark(...)` returns one `DecodeBenchRow` per video; `format_table(rows)` prints them; progress
(writing each video, then timing them) goes to standard error. The videos are
H.264 with B-frames and closed groups of pictures (GOPs) of several lengths, encoded once as MP4 and remuxed (no
re-encode) to MKV, so both containers hold the same bitstream. Every read opens the file afresh, as a real run
does; the backends take turns in every round so a change in the machine's load touches them alike.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from fastervlm import media


@dataclass(frozen=True)
class DecodeBenchRow:
    """One video: its shape and the median milliseconds of each backend for the same sampled frames."""

    container: str
    gop: int
    frames: int
    megabytes: float
    milliseconds: dict[str, float]
    """backend -> median ms of one `read_video_frames` call."""
    method: str
    """What the default backend did: "seek", or "scan" when it fell back (see `fallback`)."""
    fallback: str | None
    identical: bool
    """Whether every backend returned the same frames (byte for byte) and indices."""


def _moving_texture(width: int, height: int, seed: int = 0) -> Callable[[int], np.ndarray]:
    """Frame i of a smooth random texture panning right and down, plus a bright disc: motion an encoder must code."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))
    yy, xx = np.mgrid[0:height, 0:width]

    def frame(i: int) -> np.ndarray:
        image = np.roll(texture, (i % texture.shape[0], (2 * i) % texture.shape[1]), axis=(0, 1))[:height, :width]
        cy, cx = height // 2 + int(height / 3 * np.sin(i / 20)), (5 * i) % width
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= (height // 10) ** 2] = 255
        return image

    return frame


def write_benchmark_video(
    path: str | Path, *, seconds: float, width: int, height: int, fps: int, gop: int, bframes: int = 2,
    preset: str = "veryfast", seed: int = 0, progress: bool = False,
) -> Path:
    """H.264 yuv420p, `bframes` B-frames, a keyframe every `gop` frames exactly (scene-cut keyframes off); `seed`
    picks the texture, so that videos of one benchmark differ. `progress`: a bar of frames written (stderr)."""
    from tqdm import tqdm

    path = Path(path)
    frame = _moving_texture(width, height, seed)
    frames = round(seconds * fps)
    with av.open(str(path), "w") as container, tqdm(total=frames, desc=f"writing GOP {gop} video", unit="frame",
                                                    leave=False, disable=not progress, file=sys.stderr) as bar:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": str(bframes), "preset": preset, "sc_threshold": "0"}
        stream.codec_context.gop_size = gop
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")))
            bar.update()
        container.mux(stream.encode())
    return path


def remux(source: Path, target: Path) -> Path:
    """The same packets in another container (MP4 -> MKV): same bitstream, other index and timestamps."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None and packet.size == 0:
                continue  # the demuxer's empty flush packet
            packet.stream = copy
            out.mux(packet)
    return target


def _videos(folder: Path, seconds: float, width: int, height: int, fps: int, gops: Sequence[int],
            containers: Sequence[str], progress: bool = False) -> list[tuple[str, int, Path]]:
    """The benchmark videos, encoded once into `folder` (reused when already there)."""
    videos = []
    for gop in gops:
        stem = f"bench-{width}x{height}-{fps}fps-{seconds:g}s-gop{gop}"
        mp4 = folder / f"{stem}.mp4"
        if not mp4.is_file():
            write_benchmark_video(folder / f"{stem}.tmp.mp4", seconds=seconds, width=width, height=height, fps=fps,
                                  gop=gop, progress=progress).rename(mp4)
        for suffix in containers:
            path = folder / f"{stem}.{suffix}"
            if not path.is_file():
                remux(mp4, folder / f"{stem}.tmp.{suffix}").rename(path)
            videos.append((suffix, gop, path))
    return videos


def _available_backends() -> list[str]:
    return ["pyav", "pyav-scan"] + (["decord"] if importlib.util.find_spec("decord") is not None else [])


def _time_backends(path: Path, backends: Sequence[str], num_frames: int, repeats: int
                   ) -> tuple[dict[str, float], dict[str, media.SampledFrames]]:
    """Median ms per backend after one untimed warm-up each (the file is then in the page cache for all)."""
    results = {backend: media.read_video_frames(path, num_frames, backend) for backend in backends}
    times: dict[str, list[float]] = {backend: [] for backend in backends}
    for _ in range(repeats):
        for backend in backends:
            start = time.perf_counter()
            media.read_video_frames(path, num_frames, backend)
            times[backend].append((time.perf_counter() - start) * 1000)
    return {backend: statistics.median(values) for backend, values in times.items()}, results


def run_decode_benchmark(
    *, seconds: float = 180.0, width: int = 640, height: int = 360, fps: int = 30, gops: Sequence[int] = (12, 60, 250),
    containers: Sequence[str] = ("mp4", "mkv"), num_frames: int = 8, repeats: int = 5,
    video_dir: str | Path | None = None, backends: Sequence[str] | None = None, progress: bool = False,
) -> list[DecodeBenchRow]:
    """Time `read_video_frames` per backend on generated videos; `video_dir` keeps them for the next run (else a
    temporary folder). `backends` defaults to pyav (seek), pyav-scan and decord when it is installed. `progress`:
    bars on standard error while the videos are written and timed."""
    from tqdm import tqdm

    backends = list(backends or _available_backends())
    with tempfile.TemporaryDirectory(prefix="fastervlm-decode-bench-") as scratch:
        folder = Path(video_dir) if video_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        videos = _videos(folder, seconds, width, height, fps, gops, containers, progress)
        for suffix, gop, path in tqdm(videos, desc="bench --decode: timing", unit="video", disable=not progress,
                                      file=sys.stderr):
            milliseconds, results = _time_backends(path, backends, num_frames, repeats)
            first = results[backends[0]]
            rows.append(DecodeBenchRow(
                container=suffix, gop=gop, frames=first.total_frames, megabytes=path.stat().st_size / 2**20,
                milliseconds=milliseconds, method=results.get("pyav", first).method,
                fallback=results.get("pyav", first).fallback,
                identical=all(np.array_equal(r.frames, first.frames) and r.indices == first.indices
                              for r in results.values()),
            ))
    return rows


def format_table(rows: Sequence[DecodeBenchRow]) -> str:
    """A markdown table: one row per video, one ms column per backend, and seek's speedup over the others."""
    backends = list(rows[0].milliseconds) if rows else []
    others = [b for b in backends if b != "pyav"] if "pyav" in backends else []
    header = ["container", "GOP", "frames", "MiB", *(f"{b} ms" for b in backends), *(f"pyav vs {b}" for b in others)]
    lines = ["| " + " | ".join([*header, "pyav did", "identical"]) + " |", "|" + "---|" * (len(header) + 2)]
    for row in rows:
        ms = row.milliseconds
        cells = [row.container, str(row.gop), str(row.frames), f"{row.megabytes:.1f}"]
        cells += [f"{ms[b]:.1f}" for b in backends] + [f"x{ms[b] / ms['pyav']:.2f}" for b in others]
        cells += [row.method if row.fallback is None else f"scan ({row.fallback})", "yes" if row.identical else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
