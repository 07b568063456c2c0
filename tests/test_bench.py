"""`fastervlm bench`: rows hold every measurement, KV and FLOPs agree with the formulas, the reference extraction
gives our [CLS] scores, memory is per configuration, targets are judged right. No timed assertions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastervlm.bench import (
    PIPELINE_STAGES,
    BenchConfig,
    BenchResult,
    BenchRow,
    ExtractionRow,
    Memory,
    ModelSource,
    Stat,
    check_targets,
    default_configs,
    run_benchmark,
)
from fastervlm.bench.meter import PeakMeter as _PeakMeter
from fastervlm.cli import main
from fastervlm.flops import LLMGeometry, prefill_flops


@pytest.fixture(scope="module")
def tiny_result(tiny_checkpoint, synthetic_video) -> BenchResult:
    configs = default_configs(["fastervlm", "fastv"], [0.0, 0.75])
    return run_benchmark(ModelSource(checkpoint=str(tiny_checkpoint), device="cpu"), configs, video=synthetic_video,
                         warmup=0, repeats=2, max_new_tokens=3, isolate=False, progress=False)


def test_every_configuration_gets_a_row_with_every_stage(tiny_result, tiny_pipeline) -> None:
    frames, patches = tiny_pipeline.num_frames, tiny_pipeline.num_patches
    labels = [row.label for row in tiny_result.rows]
    assert labels == ["none", "fastervlm reduction=0.0", "fastervlm reduction=0.75", "fastv reduction=0.0",
                      "fastv reduction=0.75"]
    rows = {row.label: row for row in tiny_result.rows}
    assert rows["none"].visual_tokens == frames * patches
    assert rows["fastervlm reduction=0.75"].visual_tokens == frames * round(patches * 0.25)
    assert rows["none"].prompt_tokens - rows["fastervlm reduction=0.75"].prompt_tokens == frames * patches * 3 // 4
    assert rows["fastv reduction=0.75"].prompt_tokens == rows["none"].prompt_tokens  # FastV prunes inside the LLM
    for row in tiny_result.rows:
        assert set(PIPELINE_STAGES) - {"cls_scoring"} <= set(row.timings)
        assert ("cls_scoring" in row.timings) == (row.method == "fastervlm")
        for stat in row.timings.values():
            assert 0 <= stat.low <= stat.median <= stat.high
        stages = sum(row.timings[s].low for s in ("vision_encoder", "projector", "llm_prefill"))
        assert row.timings["time_to_first_token"].high >= stages
        assert row.memory.peak_bytes >= row.memory.baseline_bytes > 0
        assert "shared process" in row.memory.kind


def test_kv_cache_is_measured_after_the_prefill(tiny_result, tiny_pipeline) -> None:
    config = tiny_pipeline.adapter.llm.config
    per_token_per_layer = 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) * 4
    rows = {row.label: row for row in tiny_result.rows}
    for label in ("none", "fastervlm reduction=0.75"):
        assert rows[label].kv_cache_bytes == config.num_hidden_layers * rows[label].prompt_tokens * per_token_per_layer
    fastv, kept = rows["fastv reduction=0.75"], rows["fastervlm reduction=0.75"]
    layer = 2  # FastV's default K: layers below see the whole prompt, the rest the kept tokens
    expected = (layer * fastv.prompt_tokens + (config.num_hidden_layers - layer) * kept.prompt_tokens) * per_token_per_layer
    assert fastv.kv_cache_bytes == expected


def test_flops_and_speedups_follow_the_one_formula(tiny_result, tiny_pipeline) -> None:
    geometry = LLMGeometry.from_config(tiny_pipeline.adapter.llm.config)
    rows = {row.label: row for row in tiny_result.rows}
    for label in ("none", "fastervlm reduction=0.0", "fastervlm reduction=0.75"):
        assert rows[label].llm_prefill_flops == prefill_flops(geometry, rows[label].prompt_tokens)
    pruned = rows["fastervlm reduction=0.75"]
    assert pruned.flops_ratio == pytest.approx(rows["none"].llm_prefill_flops / pruned.llm_prefill_flops)
    assert rows["fastv reduction=0.75"].llm_prefill_flops > pruned.llm_prefill_flops  # its first K layers see all
    none = rows["none"]
    assert none.ttft_speedup == none.prefill_speedup == none.flops_ratio == 1.0
    assert pruned.prefill_speedup == pytest.approx(none.timings["llm_prefill"].median / pruned.timings["llm_prefill"].median)


def test_reference_extraction_row_agrees_with_ours(tiny_result, tiny_pipeline) -> None:
    ours, reference = tiny_result.extraction
    tower = tiny_pipeline.adapter.tower
    layers, frames = tower.config.num_hidden_layers, tiny_pipeline.num_frames
    assert (ours.name, reference.name) == ("ours", "reference")
    assert (ours.layers_run, reference.layers_run) == (layers - 1, layers)
    tokens, heads = tiny_pipeline.num_patches + 1, tower.config.num_attention_heads
    assert reference.attention_bytes == layers * frames * heads * tokens * tokens * 4
    assert ours.attention_bytes == frames * heads * (1 + tokens) * (tower.config.hidden_size // heads) * 4
    assert reference.max_score_difference < 1e-5


@torch.no_grad()
def test_cheap_cls_row_equals_the_cls_row_of_the_full_eager_attention(tiny_pipeline) -> None:
    """Issue 2's check through the benchmark's reference: every layer eager, every map returned, row of [-2]."""
    from fastervlm.engine import encode
    from fastervlm.methods.base import CLS_SCORES
    from fastervlm.models.languagebind_reference import eager_tower_pass, feature_select

    tower = tiny_pipeline.adapter.tower
    size = tower.config.image_size
    pixels = torch.randn(2, tiny_pipeline.num_frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    result = eager_tower_pass(tower, pixels)
    assert len(result.attentions) == tower.config.num_hidden_layers and len(result.hidden_states) == len(result.attentions) + 1
    torch.testing.assert_close(result.attentions[-2].sum(-1), torch.ones(result.attentions[-2].shape[:-1]))
    features, scores = feature_select(tower, result, -2)
    encoded = encode(tiny_pipeline.adapter.stream, pixels, frozenset({CLS_SCORES}))
    ours_features = torch.stack([sample.features for sample in encoded])
    ours = torch.stack([sample.cls_scores for sample in encoded])
    torch.testing.assert_close(scores, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(features, ours_features, atol=1e-4, rtol=1e-4)
    assert tower.config._attn_implementation is None  # the eager switch is undone


def test_isolated_run_measures_in_own_processes_with_shared_weights(synthetic_video) -> None:
    from fastervlm.tiny import TinySpec

    source = ModelSource(geometry=TinySpec(), geometry_name="tiny geometry", device="cpu")
    result = run_benchmark(source, [BenchConfig("none")], video=synthetic_video, warmup=0, repeats=1,
                           max_new_tokens=2, reference=False, progress=False)
    (row,) = result.rows
    assert result.model == "tiny geometry"
    assert row.memory.kind == "peak RSS, own process"
    assert row.memory.peak_bytes >= row.memory.baseline_bytes > 50 * 2**20  # torch and the model are resident
    assert row.visual_tokens == 8 * 64 and row.kv_cache_bytes > 0


def test_a_model_with_hundreds_of_tensors_starts_its_workers(synthetic_video) -> None:
    """A 24-layer tower has about 650 tensors; handed over one descriptor each, starting a worker died with
    "ValueError: too many fds" (the README's `--vision-layers 24` line). One shared buffer per dtype instead."""
    from fastervlm.tiny import TinySpec

    source = ModelSource(geometry=TinySpec(vision_layers=24), geometry_name="tiny, 24 vision layers", device="cpu")
    result = run_benchmark(source, [BenchConfig("none")], video=synthetic_video, warmup=0, repeats=1,
                           max_new_tokens=2, reference=False, isolate=True, progress=False)
    (row,) = result.rows
    assert row.memory.kind == "peak RSS, own process" and row.visual_tokens == 8 * 64


def test_the_handover_shares_every_weight_through_a_few_buffers() -> None:
    from fastervlm.bench.handover import hand_over
    from fastervlm.tiny import TinySpec

    pipeline = ModelSource(geometry=TinySpec(vision_layers=24), device="cpu").build()
    before = {name: t.clone() for name, t in pipeline.adapter.llm.state_dict().items()}
    handover = hand_over(pipeline)
    # one buffer per dtype (the weights' float32, the tower's int64 position ids): two descriptors, not ~750
    assert len(handover.buffers) == 2 and all(buffer.is_shared() for buffer in handover.buffers)
    spans = [(b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()) for b in handover.buffers]
    rebuilt = handover.pipeline()
    for module in (rebuilt.adapter.llm, rebuilt.adapter.tower, rebuilt.adapter.projector):
        for tensor in [*module.parameters(), *module.buffers()]:
            assert any(start <= tensor.data_ptr() < end for start, end in spans)  # a view of a buffer, not a copy
    after = rebuilt.adapter.llm.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert isinstance(rebuilt.adapter.llm.lm_head.weight, torch.nn.Parameter)


def test_a_failing_configuration_stops_the_other_processes_quietly(synthetic_video, capfd) -> None:
    from fastervlm.errors import BudgetError
    from fastervlm.tiny import TinySpec

    source = ModelSource(geometry=TinySpec(), geometry_name="tiny geometry", device="cpu")
    configs = [BenchConfig("none"), BenchConfig("fastervlm", {"reduction": 7.0})]
    with pytest.raises(BudgetError, match="reduction"):
        run_benchmark(source, configs, video=synthetic_video, warmup=0, repeats=1, max_new_tokens=2, reference=False,
                      isolate=True, progress=False)
    assert "Traceback" not in capfd.readouterr().err  # the workers it no longer needs end without one


def test_memory_meter_sees_an_allocation_inside_the_block() -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS cannot be reset on this system")
    size = 200 * 2**20
    meter = _PeakMeter(torch.device("cpu"), isolated=False)
    with meter.run():
        block = torch.ones(size // 4)  # written, so resident
        del block
    assert meter.memory().added_bytes >= 0.9 * size
    meter = _PeakMeter(torch.device("cpu"), isolated=False)
    with meter.run():
        pass
    assert meter.memory().added_bytes < size / 4  # the counter was reset: the earlier peak is gone


def _row(label: str, method: str, settings: dict, prefill: float, flops: int, **extra) -> BenchRow:
    timings = {"llm_prefill": Stat(prefill, prefill, prefill), "time_to_first_token": Stat(prefill, prefill, prefill)}
    return BenchRow(label, method, settings, "vision", 0, 0, 1, timings, Memory(1, 0, "x"), None, flops, **extra)


def _extraction(name: str, encoder: float, scoring: float, peak: int) -> ExtractionRow:
    return ExtractionRow(name, "", 1, Stat(encoder, encoder, encoder), Stat(scoring, scoring, scoring), 0, Memory(peak, 0, "x"))


@pytest.mark.parametrize(("prefill_speedup", "met"), [(8.0, True), (7.0, False)])
def test_targets_are_judged_from_the_rows(prefill_speedup: float, met: bool) -> None:
    rows = [_row("none", "none", {}, 1.0, 1000, prefill_speedup=1.0, flops_ratio=1.0),
            _row("r", "fastervlm", {"reduction": 0.9}, 1 / prefill_speedup, 100, prefill_speedup=prefill_speedup,
                 flops_ratio=10.0)]
    extraction = [_extraction("ours", 1.0, 0.005, 10), _extraction("reference", 1.2, 0.001, 20)]
    result = BenchResult("m", "cpu", "float32", 2, "t", "v", 0, 1, 1, rows, extraction)
    prefill, scoring, encoder = check_targets(result)
    assert prefill.met is met and "80%" in prefill.name
    assert scoring.met is True
    assert encoder.met is True
    slower = BenchResult("m", "cpu", "float32", 2, "t", "v", 0, 1, 1, rows,
                         [_extraction("ours", 1.0, 0.02, 30), _extraction("reference", 0.9, 0.001, 20)])
    assert [t.met for t in check_targets(slower)[1:]] == [False, False]
    assert [t.met for t in check_targets(BenchResult("m", "cpu", "f", 2, "t", "v", 0, 1, 1, [], []))] == [None] * 3


def test_bench_command_writes_json_and_plot(tmp_path, tiny_checkpoint, synthetic_video, capsys) -> None:
    code = main(["bench", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--methods", "fastervlm", "random:seed=3", "--reductions", "0.5", "--warmup", "0", "--repeats", "1",
                 "--max-new-tokens", "2", "--in-process", "--no-reference", "--out", str(tmp_path), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert printed["rows"] == saved["rows"]
    assert [r["label"] for r in saved["rows"]] == ["none", "fastervlm reduction=0.5", "random reduction=0.5 seed=3"]
    assert len(saved["targets"]) == 3
    with Image.open(tmp_path / "bench.png") as picture:
        assert picture.size == (1320, 528)
        assert np.asarray(picture.convert("L")).std() > 5  # something is drawn


def test_bench_command_prints_markdown_tables(tmp_path, tiny_checkpoint, synthetic_video, capsys) -> None:
    code = main(["bench", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--methods", "fastervlm", "--keep", "4", "--warmup", "0", "--repeats", "1", "--max-new-tokens", "1",
                 "--in-process", "--out", str(tmp_path), "--markdown"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| fastervlm keep=4 | 32 |" in out and "| reference | 3 |" in out and "| target |" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "nosuch"], "unknown method"),
    (["--methods", "fastv:layer"], "KEY=VALUE"),
    (["--repeats", "0"], "--repeats"),
    (["--geometry", "video-llava-7b", "--vision-layers", "1"], "--vision-layers"),
])
def test_bench_command_refuses_bad_settings(tmp_path, capsys, argv, message) -> None:
    assert main(["bench", "--device", "cpu", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_budgets_out_of_range_are_refused_before_any_run(tmp_path, tiny_checkpoint, synthetic_video, capsys,
                                                         monkeypatch) -> None:
    from fastervlm import bench

    def no_build(self):  # noqa: ANN001, ANN202
        raise AssertionError("the model was built")

    with monkeypatch.context() as patch:
        patch.setattr(ModelSource, "build", no_build)
        assert main(["bench", "--device", "cpu", "--out", str(tmp_path), "--reductions", "2"]) == 2
        assert "bench fastervlm reduction=2.0: --reductions must be between 0 and 1" in capsys.readouterr().err

    def no_workers(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a run started")

    monkeypatch.setattr(bench.runner, "_workers", no_workers)
    assert main(["bench", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(synthetic_video),
                 "--keeps", "999", "--in-process", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bench fastervlm keep=999: --keeps must be a whole number of patches per frame between 0 and" in err
    assert err.rstrip().endswith("(got 999).")  # one sentence, not a repeated patch count
    assert "bench:" not in err  # no progress bar


def test_targets_do_not_apply_to_a_toy_model(tiny_result) -> None:
    from dataclasses import replace

    from fastervlm.bench import TARGET_MIN_WIDTH

    assert tiny_result.llm_width is not None and tiny_result.llm_width < TARGET_MIN_WIDTH
    targets = check_targets(tiny_result)
    assert [t.met for t in targets] == [None] * 3
    assert all("n/a: a toy model" in t.measured for t in targets)
    wide = check_targets(replace(tiny_result, llm_width=4096))  # same numbers on a real-width model: judged
    assert wide[1].met is not None and "n/a" not in wide[1].measured


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video"])
def test_a_transformers_checkpoint_gets_flops_and_kv_columns(tmp_path, tmp_path_factory, synthetic_video, capsys,
                                                             family) -> None:
    """Issue 11: FLOPs and the KV cache are read through the adapter contract, so they come out for the
    transformers families too (a tiny checkpoint written from transformers' own classes, loaded from disk)."""
    from hf_tiny import checkpoint

    folder = checkpoint(family, tmp_path_factory)
    code = main(["bench", "--model", str(folder), "--device", "cpu", "--video", str(synthetic_video), "--methods",
                 "fastervlm", "fastv", "--reductions", "0.5", "--warmup", "0", "--repeats", "1", "--max-new-tokens", "2",
                 "--in-process", "--no-progress", "--out", str(tmp_path), "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["label"] for r in rows] == ["none", "fastervlm reduction=0.5", "fastv reduction=0.5"]
    for row in rows:
        assert row["llm_prefill_flops"] > 0 and row["kv_cache_bytes"] > 0
    none, pruned, fastv = rows
    assert pruned["llm_prefill_flops"] < fastv["llm_prefill_flops"] < none["llm_prefill_flops"]
    assert pruned["kv_cache_bytes"] < none["kv_cache_bytes"]
