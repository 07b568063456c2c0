"""bench/decode.py on tiny videos: one row per container x GOP, identical frames, a table with every backend."""

from __future__ import annotations

import av

from fastervlm.bench import decode as decode_bench


def test_benchmark_rows_and_table(tmp_path):
    rows = decode_bench.run_decode_benchmark(seconds=2, width=64, height=48, fps=15, gops=(5, 40), repeats=2,
                                             video_dir=tmp_path, backends=("pyav", "pyav-scan"))
    assert [(r.container, r.gop) for r in rows] == [("mp4", 5), ("mkv", 5), ("mp4", 40), ("mkv", 40)]
    for row in rows:
        assert row.frames == 30 and row.identical and (row.method, row.fallback) == ("seek", None)
        assert set(row.milliseconds) == {"pyav", "pyav-scan"} and all(ms > 0 for ms in row.milliseconds.values())
    table = decode_bench.format_table(rows).splitlines()
    assert table[0] == "| container | GOP | frames | MiB | pyav ms | pyav-scan ms | pyav vs pyav-scan | pyav did | identical |"
    assert len(table) == 2 + 4 and all(line.endswith("| seek | yes |") for line in table[2:])
    assert len(list(tmp_path.glob("*.mp4"))) == 2 and len(list(tmp_path.glob("*.mkv"))) == 2  # kept for a rerun


def test_benchmark_video_has_b_frames_and_exact_gops(tmp_path):
    path = decode_bench.write_benchmark_video(tmp_path / "v.mp4", seconds=2, width=64, height=48, fps=15, gop=7)
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == 30
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == list(range(0, 30, 7))
    assert [p.pts for p in packets] != sorted(p.pts for p in packets)  # B-frames


def test_the_mkv_copy_holds_the_same_bitstream(tmp_path):
    mp4 = decode_bench.write_benchmark_video(tmp_path / "v.mp4", seconds=1, width=64, height=48, fps=10, gop=4)
    mkv = decode_bench.remux(mp4, tmp_path / "v.mkv")
    payloads = []
    for path in (mp4, mkv):
        with av.open(str(path)) as container:
            payloads.append([bytes(p) for p in container.demux(video=0) if p.size])
    assert payloads[0] == payloads[1] and len(payloads[0]) == 10


def test_empty_table():
    assert decode_bench.format_table([]).splitlines()[0] == "| container | GOP | frames | MiB | pyav did | identical |"


def test_bench_decode_shows_progress_on_stderr_and_the_table_on_stdout(tmp_path, capsys) -> None:
    from fastervlm.cli import main

    argv = ["bench", "--decode", "--size", "64x48", "--duration", "2", "--fps", "10", "--gops", "5", "40",
            "--containers", "mp4", "--repeats", "1", "--out-dir", str(tmp_path)]
    assert main([*argv, "--video-dir", str(tmp_path / "videos")]) == 0
    captured = capsys.readouterr()
    assert "writing GOP 5 video" in captured.err and "writing GOP 40 video" in captured.err  # while encoding
    assert "bench --decode: timing" in captured.err and "2/2" in captured.err  # then per video timed
    table = captured.out.splitlines()
    assert table[0].startswith("| container |") and len(table) == 4  # the table alone: header, rule, two videos
    assert "bench --decode" not in captured.out and "writing" not in captured.out
    assert main([*argv, "--video-dir", str(tmp_path / "videos"), "--no-progress"]) == 0
    quiet = capsys.readouterr()
    assert "bench --decode" not in quiet.err and quiet.out.splitlines()[0].startswith("| container |")
