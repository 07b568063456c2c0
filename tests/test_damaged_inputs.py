"""What real users meet on the model path: damaged weight and tokenizer files, prompts longer than the LLM's
context, loading onto a device. Each gets a one-line error naming the file (or the lengths) and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hf_tiny import checkpoint as hf_checkpoint

import fastervlm
from fastervlm.cli import main
from fastervlm.errors import CheckpointError, PromptTooLongError
from fastervlm.models.base import GenerationSettings
from fastervlm.models.loading import placement
from fastervlm.tiny import write_tiny_checkpoint


@pytest.fixture()
def checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A writable copy of both tiny folders; returns the LLM folder."""
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "copy")
    return tmp_path / "copy" / tiny_checkpoint.name


def _cut(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def _refused(capsys, checkpoint: Path, video: Path, message: str) -> None:
    code = main(["answer", "--model", str(checkpoint), "--video", str(video), "--question", "What?", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "re-download it" in err and "Traceback" not in err, err


# ----- weights cut short (an interrupted download) ------------------------------------------------------------------
def test_a_truncated_safetensors_shard(checkpoint_copy: Path, synthetic_video: Path, capsys) -> None:
    shard = sorted(checkpoint_copy.glob("model-*.safetensors"))[1]
    _cut(shard)
    _refused(capsys, checkpoint_copy, synthetic_video, f"{shard} is damaged or incomplete")


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_a_truncated_single_file_or_bin_shard(tmp_path: Path, synthetic_video: Path, capsys, weights_format: str) -> None:
    shards = 1 if weights_format == "safetensors" else 2
    llm = write_tiny_checkpoint(tmp_path, weights_format=weights_format, shards=shards)
    victim = sorted(llm.glob(f"*.{weights_format}"))[-1]
    _cut(victim, 0.8)
    with pytest.raises(CheckpointError, match=rf"{victim.name} is damaged or incomplete \(.*\): re-download it"):
        fastervlm.load(llm, device="cpu")


def test_a_truncated_tower_file(checkpoint_copy: Path, synthetic_video: Path, capsys) -> None:
    tower = checkpoint_copy.parent / "LanguageBind_Video_merge" / "pytorch_model.bin"
    _cut(tower)
    _refused(capsys, checkpoint_copy, synthetic_video, f"{tower} is damaged or incomplete")


def test_a_damaged_shard_index(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_')
    with pytest.raises(CheckpointError, match="model.safetensors.index.json is damaged"):
        fastervlm.load(checkpoint_copy, device="cpu")


def test_a_truncated_transformers_checkpoint(tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("cut") / "video_llava"
    shutil.copytree(hf_checkpoint("video_llava", tmp_path_factory), folder)
    _cut(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors is damaged or incomplete"):
        fastervlm.load(folder, device="cpu")


# ----- a tokenizer that is not the checkpoint's --------------------------------------------------------------------
@pytest.mark.parametrize("size", [2000, 5000])
def test_a_cut_tokenizer_model_is_called_damaged(checkpoint_copy: Path, size: int) -> None:
    """Cut to 2,000 bytes it used to load with 118 pieces and answer '' (exit 0); cut to 5,000 it blamed packages
    that are installed."""
    tokenizer = checkpoint_copy / "tokenizer.model"
    tokenizer.write_bytes(tokenizer.read_bytes()[:size])
    with pytest.raises(CheckpointError, match="tokenizer.model is damaged or does not belong to this checkpoint") as err:
        fastervlm.load(checkpoint_copy, device="cpu")
    assert "pip install" not in str(err.value)


def test_a_tokenizer_of_another_model_is_refused(checkpoint_copy: Path, tmp_path: Path) -> None:
    from fastervlm.tiny import TinySpec

    other = write_tiny_checkpoint(tmp_path / "other", TinySpec(vocab_size=1024))
    shutil.copy(other / "tokenizer.model", checkpoint_copy / "tokenizer.model")
    with pytest.raises(CheckpointError, match=r"it has \d+ entries; the model's vocabulary has 384"):
        fastervlm.load(checkpoint_copy, device="cpu")


# ----- prompts longer than the context ----------------------------------------------------------------------------
LONG_QUESTION = "What is moving across the picture, and why? " * 600  # about 27,000 characters


def test_a_prompt_longer_than_the_context_is_refused(tiny_pipeline) -> None:
    pixels = torch.zeros(tiny_pipeline.num_frames, 3, 112, 112)
    limit = tiny_pipeline.adapter.max_context
    with pytest.raises(PromptTooLongError, match=rf"longer than the {limit} tokens") as err:
        tiny_pipeline.answer(LONG_QUESTION, pixels=pixels, generation=GenerationSettings(max_new_tokens=1))
    visual = tiny_pipeline.num_frames * tiny_pipeline.num_patches
    assert f"({visual} visual + " in str(err.value) and "keep fewer visual tokens" in str(err.value)
    assert err.value.sample == 0


def test_the_cli_refuses_a_too_long_question(tiny_checkpoint: Path, synthetic_video: Path, capsys) -> None:
    code = main(["answer", "--model", str(tiny_checkpoint), "--video", str(synthetic_video), "--question",
                 LONG_QUESTION, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "longer than the 4096 tokens" in err and "Traceback" not in err


# ----- loading straight onto the device ----------------------------------------------------------------------------
def test_cuda_loads_through_a_device_map_and_the_cpu_does_not() -> None:
    pytest.importorskip("accelerate")
    assert placement(torch.device("cuda", 1)) == {"device_map": {"": torch.device("cuda", 1)}}
    assert placement(torch.device("cpu")) == {}


def test_a_device_map_load_gives_the_same_model(tiny_checkpoint: Path, monkeypatch) -> None:
    """The device_map path (what CUDA takes) loads the same weights; checked here with a CPU device map."""
    pytest.importorskip("accelerate")
    import fastervlm.models.videollava as videollava

    plain = fastervlm.load(tiny_checkpoint, device="cpu").adapter.llm.state_dict()
    monkeypatch.setattr(videollava, "placement", lambda device: {"device_map": {"": device}})
    mapped = fastervlm.load(tiny_checkpoint, device="cpu").adapter.llm.state_dict()
    assert plain.keys() == mapped.keys() and all(torch.equal(plain[k], mapped[k]) for k in plain)
