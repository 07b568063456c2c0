"""Original-format Video-LLaVA: loading every on-disk layout, the prompt, and pruning's effect on the LLM input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

import fastervlm
from fastervlm.errors import CheckpointError, FasterVLMError
from fastervlm.models.base import GenerationSettings
from fastervlm.models.languagebind import LanguageBindVideoTower, vision_config_from_dict
from fastervlm.models.videollava import (
    IMAGE_TOKEN_INDEX,
    VideoLlavaAdapter,
    build_projector,
    llama_config,
    llava_v1_prompt,
    tokenize_with_placeholders,
)
from fastervlm.pipeline import Pipeline
from fastervlm.tiny import TinySpec, llm_config, tiny_weights, vision_config, write_tiny_checkpoint

SHORT = GenerationSettings(max_new_tokens=6)


def _pixels(pipeline: Pipeline, seed: int = 0) -> torch.Tensor:
    size = pipeline.adapter.tower.config.image_size
    return torch.randn(pipeline.num_frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def prefill_logits(pipeline: Pipeline, pixels: torch.Tensor, **method) -> tuple[torch.Tensor, list[int]]:
    """The logits of the LLM's first forward (the prefill) and the greedy tokens, for one answer."""
    captured: list[torch.Tensor] = []
    handle = pipeline.adapter.llm.register_forward_hook(
        lambda module, args, output: captured.append(output.logits[:, -1].clone()) if not captured else None
    )
    try:
        answer = pipeline.answer("What happens?", pixels=pixels, generation=SHORT, **method)
    finally:
        handle.remove()
    return captured[0], answer.output_ids


def test_keeping_every_patch_equals_no_pruning(tiny_pipeline) -> None:
    pixels = _pixels(tiny_pipeline)
    baseline, baseline_ids = prefill_logits(tiny_pipeline, pixels, method="none")
    kept_all, kept_ids = prefill_logits(tiny_pipeline, pixels, method="fastervlm", keep=tiny_pipeline.num_patches)
    reduction_zero, _ = prefill_logits(tiny_pipeline, pixels, method="fastervlm", reduction=0.0)
    torch.testing.assert_close(kept_all, baseline, atol=0, rtol=0)
    torch.testing.assert_close(reduction_zero, baseline, atol=0, rtol=0)
    assert kept_ids == baseline_ids
    pruned, _ = prefill_logits(tiny_pipeline, pixels, method="fastervlm", keep=2)
    assert not torch.allclose(pruned, baseline)  # pruning does change what the LLM sees


def test_per_frame_budget_counts_and_prompt_length(tiny_pipeline) -> None:
    pixels = _pixels(tiny_pipeline)
    full = tiny_pipeline.answer("What happens?", pixels=pixels, generation=SHORT)
    pruned = tiny_pipeline.answer("What happens?", pixels=pixels, reduction=0.9, generation=SHORT)
    keep = round(tiny_pipeline.num_patches * 0.1)
    assert pruned.visual_tokens == tiny_pipeline.num_frames * keep
    assert [len(frame) for frame in pruned.kept_indices] == [keep] * tiny_pipeline.num_frames
    assert all(frame == sorted(frame) for frame in pruned.kept_indices)
    assert full.prompt_tokens - pruned.prompt_tokens == full.visual_tokens - pruned.visual_tokens
    # the kept patches are the ones the [CLS] row ranks highest in each frame
    for frame, kept in zip(pruned.cls_scores, pruned.kept_indices):
        assert set(kept) == set(torch.sort(frame, descending=True, stable=True).indices[:keep].tolist())


def test_zero_tokens_gives_a_text_only_prompt_that_generates(tiny_pipeline) -> None:
    result = tiny_pipeline.answer("What happens?", pixels=_pixels(tiny_pipeline), keep=0, generation=SHORT)
    text_only = tokenize_with_placeholders(tiny_pipeline.adapter.tokenizer, llava_v1_prompt("What happens?", 8))
    assert result.visual_tokens == 0
    assert result.kept_indices == [[] for _ in range(tiny_pipeline.num_frames)]
    assert result.prompt_tokens == len([t for t in text_only if t != IMAGE_TOKEN_INDEX])
    assert 1 <= len(result.output_ids) <= SHORT.max_new_tokens


def test_prompt_is_llava_v1_with_one_marker_per_frame(tiny_pipeline) -> None:
    tokenizer = tiny_pipeline.adapter.tokenizer
    prompt = llava_v1_prompt("what is the video doing?", 8)
    assert prompt.startswith("A chat between a curious human and an artificial intelligence assistant.")
    assert prompt.endswith(" USER: " + "<image>" * 8 + "\nwhat is the video doing? ASSISTANT:")
    ids = tokenize_with_placeholders(tokenizer, prompt)
    head, tail = prompt.split("<image>" * 8)
    expected = tokenizer(head).input_ids + [IMAGE_TOKEN_INDEX] * 8 + tokenizer(tail).input_ids[1:]
    assert ids == expected
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_batched_answers_equal_one_at_a_time(tiny_pipeline) -> None:
    questions = ["What happens?", "Which object moves from the left to the right of the picture?"]
    frames = [tiny_pipeline.frames(pixels=_pixels(tiny_pipeline, seed)) for seed in (1, 2)]
    pruner = tiny_pipeline.pruner("fastervlm", reduction=0.5)
    batched = tiny_pipeline.run(frames, questions, pruner, SHORT)
    single = [tiny_pipeline.run([f], [q], pruner, SHORT)[0] for f, q in zip(frames, questions)]
    assert [b.output_ids for b in batched] == [s.output_ids for s in single]
    assert [b.kept_indices for b in batched] == [s.kept_indices for s in single]


def test_sampling_is_reproducible_with_a_seed(tiny_pipeline) -> None:
    pixels = _pixels(tiny_pipeline)
    sample = GenerationSettings(max_new_tokens=8, sample=True, temperature=1.0, seed=7)
    first = tiny_pipeline.answer("What happens?", pixels=pixels, generation=sample)
    again = tiny_pipeline.answer("What happens?", pixels=pixels, generation=sample)
    assert first.output_ids == again.output_ids


def _in_memory_adapter(spec: TinySpec, checkpoint: Path) -> VideoLlavaAdapter:
    """The model the tiny checkpoint was written from, built without reading any weight file."""
    weights = tiny_weights(spec)
    config = llm_config(spec, "")
    llm = LlamaForCausalLM(llama_config(config))
    llm.load_state_dict(weights.llm)
    tower = LanguageBindVideoTower(vision_config_from_dict(vision_config(spec)))
    tower.load_state_dict(weights.tower)
    projector = build_projector(config)
    projector.load_state_dict(weights.projector)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, config=llm.config)  # not config.json: a LLaVA-1.5 config to transformers
    return VideoLlavaAdapter(llm.eval(), projector.eval(), tower.eval(), tokenizer, config, GenerationConfig())


@pytest.mark.parametrize("weights_format, shards", [("safetensors", 2), ("bin", 2), ("safetensors", 1)])
def test_checkpoint_on_disk_equals_the_in_memory_model(tmp_path: Path, weights_format: str, shards: int) -> None:
    spec = TinySpec()
    checkpoint = write_tiny_checkpoint(tmp_path, spec, weights_format=weights_format, shards=shards)
    loaded = fastervlm.load(checkpoint, device="cpu")
    memory = Pipeline(_in_memory_adapter(spec, checkpoint), checkpoint)
    pixels = _pixels(loaded)
    for method in ({"method": "none"}, {"reduction": 0.75}):
        disk_logits, disk_ids = prefill_logits(loaded, pixels, **method)
        memory_logits, memory_ids = prefill_logits(memory, pixels, **method)
        torch.testing.assert_close(disk_logits, memory_logits, atol=0, rtol=0)
        assert disk_ids == memory_ids


# ----- checkpoints that cannot be used get a clear error ------------------------------------------------------
@pytest.fixture()
def checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A writable copy of both tiny folders; returns the LLM folder."""
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "copy")
    return tmp_path / "copy" / tiny_checkpoint.name


def test_missing_config(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        fastervlm.load(checkpoint_copy, device="cpu")


def test_missing_weights(checkpoint_copy: Path) -> None:
    for shard in checkpoint_copy.glob("model-*.safetensors"):
        shard.unlink()
    with pytest.raises(CheckpointError, match="finish the download"):
        fastervlm.load(checkpoint_copy, device="cpu")


def test_missing_tokenizer(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        fastervlm.load(checkpoint_copy, device="cpu")


def test_hub_tower_name_asks_for_video_tower(checkpoint_copy: Path) -> None:
    config = (checkpoint_copy / "config.json").read_text().replace("../LanguageBind_Video_merge", "LanguageBind/LanguageBind_Video_merge")
    (checkpoint_copy / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="--video-tower"):
        fastervlm.load(checkpoint_copy, device="cpu")
    loaded = fastervlm.load(checkpoint_copy, device="cpu", video_tower=checkpoint_copy.parent / "LanguageBind_Video_merge")
    assert loaded.num_frames == 8


def test_config_without_a_video_tower_asks_for_one(checkpoint_copy: Path) -> None:
    config = json.loads((checkpoint_copy / "config.json").read_text())
    del config["mm_video_tower"]
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"names no video tower \(mm_video_tower\);.*--video-tower"):
        fastervlm.load(checkpoint_copy, device="cpu")


def test_tower_whose_frame_count_disagrees(checkpoint_copy: Path) -> None:
    tower_config = checkpoint_copy.parent / "LanguageBind_Video_merge" / "config.json"
    tower_config.write_text(tower_config.read_text().replace('"num_frames": 8', '"num_frames": 4'))
    with pytest.raises(CheckpointError, match="num_frames=4"):
        fastervlm.load(checkpoint_copy, device="cpu")


def test_unsupported_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(CheckpointError, match="not a model fastervlm supports"):
        fastervlm.load(tmp_path, device="cpu")


def test_pixels_of_the_wrong_shape(tiny_pipeline) -> None:
    with pytest.raises(FasterVLMError, match=r"pixels must have shape \(8, 3"):
        tiny_pipeline.answer("What happens?", pixels=torch.zeros(4, 3, 112, 112))
    with pytest.raises(FasterVLMError, match="question is empty"):
        tiny_pipeline.answer("  ", pixels=_pixels(tiny_pipeline))


def test_fastv_reports_the_tokens_it_kept_per_frame(tiny_pipeline) -> None:
    result = tiny_pipeline.answer("What happens?", pixels=_pixels(tiny_pipeline), method="fastv", keep=3, generation=SHORT)
    assert result.visual_tokens == 8 * 3
    assert sum(len(frame) for frame in result.kept_indices) == 8 * 3  # FastV's budget is over the whole video
    assert all(frame == sorted(frame) and all(0 <= i < tiny_pipeline.num_patches for i in frame) for frame in result.kept_indices)
    assert result.cls_scores is None  # FastV scores inside the LLM, not with [CLS]


def test_decoding_a_video_never_waits_for_the_gpu(tiny_pipeline, synthetic_video: Path, monkeypatch) -> None:
    """Pipeline.frames runs on the CPU, often in a prefetch thread beside the model: a CUDA sync there would stall
    it behind the model's queued work and count that wait as decoding time."""
    syncs: list[object] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    frames = tiny_pipeline.frames(video=synthetic_video)
    assert frames.pixels.shape[0] == tiny_pipeline.num_frames and frames.decode_seconds > 0
    assert syncs == []


def test_tower_and_projector_load_without_random_init_in_the_asked_dtype(tiny_checkpoint: Path, monkeypatch) -> None:
    """Random init of modules whose every weight is then loaded is wasted time (seconds for the real tower)."""
    inits: list[tuple[int, ...]] = []
    real = torch.nn.init.kaiming_uniform_

    def counting(*args, **kwargs):
        tensor = args[0] if args else kwargs["tensor"]
        if tensor.device.type != "meta":  # transformers builds the LLM on the meta device: no real init there
            inits.append(tuple(tensor.shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", counting)
    adapter = fastervlm.load(tiny_checkpoint, device="cpu", dtype="bf16").adapter
    assert inits == []
    weights = tiny_weights(TinySpec())
    for module, expected in ((adapter.tower, weights.tower), (adapter.projector, weights.projector)):
        loaded = module.state_dict()
        assert loaded.keys() == expected.keys()
        for name, value in loaded.items():
            assert value.dtype == torch.bfloat16 and torch.equal(value, expected[name].to(torch.bfloat16)), name


def test_llama_config_keeps_the_rope_settings_of_a_legacy_config_json() -> None:
    """transformers 5 folds rope_theta / rope_scaling into rope_parameters; dropping them would silently run
    another position encoding than the checkpoint was trained with."""
    config = {**llm_config(TinySpec(), "../tower"), "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    llama = llama_config(config)
    assert llama.rope_parameters["rope_theta"] == 500000.0
    assert llama.rope_parameters["rope_type"] == "linear" and llama.rope_parameters["factor"] == 2.0
    assert llama.hidden_size == config["hidden_size"] and llama.model_type == "llama"
    assert not any(hasattr(llama, key) for key in config if key.startswith("mm_"))
    assert llama_config({k: v for k, v in config.items() if not k.startswith("rope")}).rope_parameters["rope_theta"] == 10000.0



def _with_position_ids(state: dict, tower_file: Path) -> None:
    """Older transformers saved CLIP's position_ids buffer into the weights; it is derived, not loaded."""
    patches = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    torch.save({**state, "vision_model.embeddings.position_ids": torch.arange(patches)[None]}, tower_file)


def _legacy_format(state: dict, tower_file: Path) -> None:
    """torch.save's pre-1.6 format, which cannot be memory-mapped."""
    torch.save(state, tower_file, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("rewrite", [_with_position_ids, _legacy_format])
def test_older_tower_files_load(checkpoint_copy: Path, rewrite) -> None:
    tower_file = checkpoint_copy.parent / "LanguageBind_Video_merge" / "pytorch_model.bin"
    reference = fastervlm.load(checkpoint_copy, device="cpu")
    rewrite(torch.load(tower_file, weights_only=True), tower_file)
    loaded = fastervlm.load(checkpoint_copy, device="cpu")
    pixels = _pixels(loaded)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.adapter.tower(pixels), reference.adapter.tower(pixels), atol=0, rtol=0)
