"""Checkpoint files a user can break, for every family: each is refused before anything is built from it, in one
line (a CheckpointError) that names the damaged file and the fix, never a traceback from inside transformers, and
never blamed on another file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hf_tiny import checkpoint as hf_checkpoint

import fastervlm
from fastervlm.cli import main
from fastervlm.errors import CheckpointError
from fastervlm.tiny import write_tiny_checkpoint

TOWER = "LanguageBind_Video_merge"


@pytest.fixture()
def original(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny original-format checkpoint (LLM and tower folders); returns the LLM folder."""
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "copy")
    return tmp_path / "copy" / tiny_checkpoint.name


def _edit(file: Path, change: Callable[[dict], object]) -> None:
    file.write_text(json.dumps(change(json.loads(file.read_text()))))


def _refused(folder: Path, *expected: str) -> str:
    with pytest.raises(CheckpointError) as err:
        fastervlm.load(folder, device="cpu")
    message = str(err.value)
    assert all(text in message for text in expected) and "\n" not in message, message
    return message


def _without(key: str) -> Callable[[dict], dict]:
    return lambda config: {k: v for k, v in config.items() if k != key}


# ----- original-format Video-LLaVA: the LLM's config.json -----------------------------------------------------------
@pytest.mark.parametrize("change, expected", [
    (_without("hidden_size"), "config.json lacks hidden_size"),
    (lambda c: c | {"hidden_size": "64"}, 'config.json has hidden_size = "64", not a positive whole number'),
    (lambda c: c | {"num_attention_heads": 0}, "config.json has num_attention_heads = 0, not a positive whole number"),
    (lambda c: c | {"max_position_embeddings": None}, "has max_position_embeddings = null"),
    (lambda c: c | {"hidden_size": 128}, "config.json says hidden_size = 128, but model.embed_tokens.weight in "
                                         "model-00002-of-00002.safetensors has shape [384, 64]"),
    (lambda c: c | {"vocab_size": 500}, "config.json says vocab_size = 500, but model.embed_tokens.weight"),
    (lambda c: c | {"mm_hidden_size": 48}, "says mm_hidden_size = 48, but model.mm_projector.0.weight"),
    (lambda c: [c], "config.json holds a JSON list, not an object"),
    (lambda c: c | {"rms_norm_eps": "small"}, "config.json does not describe a model transformers can build"),
], ids=["no hidden_size", "hidden_size as text", "zero heads", "null context", "width disagrees",
        "vocab_size disagrees", "projector width disagrees", "a list", "rms_norm_eps as text"])
def test_a_damaged_llm_config_is_named(original: Path, change, expected: str) -> None:
    _edit(original / "config.json", change)
    message = _refused(original, str(original / "config.json"), expected)
    assert "use the config.json that came with these weights" in message or "re-download" in message


def test_the_cli_says_it_in_one_line(original: Path, synthetic_video: Path, capsys) -> None:
    _edit(original / "config.json", _without("hidden_size"))
    code = main(["answer", "--model", str(original), "--video", str(synthetic_video), "--question", "What?",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "lacks hidden_size" in err, err


def test_a_generation_config_that_is_not_json(original: Path) -> None:
    (original / "generation_config.json").write_text("{'top_p': 0.9")
    _refused(original, f"{original / 'generation_config.json'} is not valid JSON", "re-download it")


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
def test_a_tokenizer_json_file_is_named_not_the_tokenizer_model(original: Path, name: str) -> None:
    (original / name).write_text('{"add_bos_token": tru')
    message = _refused(original, f"{original / name} is not valid JSON")
    assert "tokenizer.model" not in message


def test_a_bin_shard_of_random_bytes(tmp_path: Path) -> None:
    """It used to reach torch.load and stop with an UnpicklingError traceback."""
    llm = write_tiny_checkpoint(tmp_path, weights_format="bin", shards=2)
    shard = sorted(llm.glob("pytorch_model-*.bin"))[1]
    shard.write_bytes(os.urandom(shard.stat().st_size))
    _refused(llm, f"{shard} is damaged or incomplete", "re-download it")


# ----- the LanguageBind tower folder -----------------------------------------------------------------------------
def test_a_tower_without_config_json_is_blamed_on_the_tower(original: Path) -> None:
    tower = original.parent / TOWER
    (tower / "config.json").unlink()
    message = _refused(original, f"{tower} has no config.json", "--video-tower")
    assert "--model" not in message


def test_a_tower_bin_of_random_bytes(original: Path) -> None:
    weights = original.parent / TOWER / "pytorch_model.bin"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    _refused(original, f"{weights} is damaged or incomplete")


def test_a_tower_width_that_disagrees_with_its_weights(original: Path) -> None:
    config = original.parent / TOWER / "config.json"
    _edit(config, lambda c: c | {"vision_config": c["vision_config"] | {"hidden_size": 48}})
    _refused(original, f"{config} says vision_config.hidden_size = 48, but vision_model.embeddings.patch_embedding"
                       ".weight in pytorch_model.bin has shape [32, 3, 14, 14]")


def test_a_tower_frame_count_that_is_not_a_number(original: Path) -> None:
    config = original.parent / TOWER / "config.json"
    _edit(config, lambda c: c | {"vision_config": c["vision_config"] | {"num_frames": "8"}})
    _refused(original, "has num_frames = '8', not a positive whole number")


def test_a_tower_config_without_a_size(original: Path) -> None:
    config = original.parent / TOWER / "config.json"
    _edit(config, lambda c: c | {"vision_config": {k: v for k, v in c["vision_config"].items() if k != "patch_size"}})
    _refused(original, f"{config} lacks vision_config.patch_size")


# ----- transformers checkpoints -----------------------------------------------------------------------------------
@pytest.fixture()
def transformers_copy(tmp_path: Path, tmp_path_factory) -> Callable[[str], Path]:
    def copy(family: str) -> Path:
        folder = tmp_path / family
        shutil.copytree(hf_checkpoint(family, tmp_path_factory), folder)
        return folder
    return copy


def _section(name: str, change: Callable[[dict], dict]) -> Callable[[dict], dict]:
    return lambda config: config | {name: change(config[name])}


@pytest.mark.parametrize("change, expected", [
    (_without("vision_config"), "config.json has no vision_config object"),
    (_section("text_config", lambda t: t | {"hidden_size": "64"}), 'has text_config.hidden_size = "64"'),
    (_section("text_config", lambda t: t | {"hidden_size": 128}), "says text_config.hidden_size = 128, but "
                                                                 "language_model.model.embed_tokens.weight"),
    (_section("text_config", lambda t: t | {"vocab_size": 500}), "says text_config.vocab_size = 500"),
    (_section("text_config", _without("hidden_size")), "leaves out text_config.hidden_size (default 4096)"),
    (_section("vision_config", lambda v: v | {"hidden_size": 48}), "says vision_config.hidden_size = 48, but "),
    (_section("text_config", lambda t: t | {"rms_norm_eps": "small"}), "does not describe a model transformers can"),
    (lambda c: [c], "config.json holds a JSON list, not an object"),
], ids=["no vision_config", "width as text", "width disagrees", "vocab disagrees", "width left out",
        "vision width disagrees", "rms_norm_eps as text", "a list"])
@pytest.mark.parametrize("family", ["video_llava", "llava_onevision"])
def test_a_damaged_transformers_config_is_named(transformers_copy, family: str, change, expected: str) -> None:
    folder = transformers_copy(family)
    _edit(folder / "config.json", change)
    _refused(folder, str(folder / "config.json"), expected)


@pytest.mark.parametrize("family, name, text, expected", [
    ("video_llava", "generation_config.json", "{", "generation_config.json is not valid JSON"),
    ("video_llava", "tokenizer_config.json", "{", "tokenizer_config.json is not valid JSON"),
    ("video_llava", "added_tokens.json", "[", "added_tokens.json is not valid JSON"),
    ("video_llava", "tokenizer.json", '{"version": "1.0", "model": 3}', "tokenizer.json is damaged or does not belong"),
    ("video_llava", "preprocessor_config.json", "[1]", "preprocessor_config.json holds a JSON list"),
    ("llava_next_video", "preprocessor_config.json", '{"crop_size": "big"}', "the preprocessing settings in"),
    ("llava", "chat_template.json", "{", "chat_template.json is not valid JSON"),
    ("llava_onevision", "chat_template.json", '{"chat_template": 3}', "chat_template.json holds no chat_template"),
    ("llava_next_video", "chat_template.jinja", "{% for %}", "chat_template.jinja does not work (TemplateSyntaxError"),
], ids=lambda value: value if "/" not in str(value) and len(str(value)) < 30 else None)
def test_a_damaged_side_file_is_named(transformers_copy, family: str, name: str, text: str, expected: str) -> None:
    folder = transformers_copy(family)
    (folder / name).write_text(text)
    _refused(folder, expected)


# ----- a normal answer prints nothing on stderr -------------------------------------------------------------------
def test_an_answer_prints_no_warning(tiny_checkpoint: Path, synthetic_video: Path) -> None:
    """The original checkpoint's config.json carries `rope_scaling: null`; transformers' tokenizer loader read it as
    a LLaVA-1.5 config and printed a FutureWarning about that field on every answer."""
    assert json.loads((tiny_checkpoint / "config.json").read_text())["rope_scaling"] is None  # as the real one
    done = subprocess.run([sys.executable, "-m", "fastervlm", "answer", "--model", str(tiny_checkpoint), "--video",
                           str(synthetic_video), "--question", "What?", "--max-new-tokens", "2", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(fastervlm.__file__).parents[1])})
    lines = done.stderr.splitlines()  # the summary line only
    assert done.returncode == 0 and len(lines) == 1 and "none] visual tokens 512" in lines[0], done.stderr


# ----- Qwen-VL checkpoints: their own vision sizes, text sizes in text_config or at the top ------------------------
@pytest.mark.parametrize("change, expected", [
    (_section("vision_config", lambda v: v | {"depth": "2"}), 'has vision_config.depth = "2", not a positive whole'),
    (_section("vision_config", lambda v: v | {"hidden_size": 48}), "says vision_config.hidden_size = 48, but "),
    (_section("vision_config", lambda v: v | {"temporal_patch_size": 3}), "says vision_config.temporal_patch_size = 3"),
    (_section("text_config", lambda t: t | {"vocab_size": 500}), "says text_config.vocab_size = 500, but "),
    (_section("text_config", lambda t: t | {"num_hidden_layers": None}), "text_config.num_hidden_layers = null"),
], ids=["depth as text", "vision width disagrees", "temporal patch disagrees", "vocab disagrees", "null layers"])
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_damaged_qwen_config_is_named(transformers_copy, family: str, change, expected: str) -> None:
    folder = transformers_copy(family)
    _edit(folder / "config.json", change)
    _refused(folder, str(folder / "config.json"), expected)


def test_a_qwen2_5_vl_config_with_its_text_sizes_at_the_top_loads_and_is_checked(transformers_copy) -> None:
    """Qwen2.5-VL's hub configs keep the LLM's sizes at the top level, not in text_config."""
    folder = transformers_copy("qwen2_5_vl")

    def flat(config: dict) -> dict:
        text = {k: v for k, v in config.pop("text_config").items() if k != "model_type"}
        return config | text

    _edit(folder / "config.json", flat)
    assert fastervlm.load(folder, device="cpu").adapter.family == "qwen2-5-vl-hf"
    _edit(folder / "config.json", lambda c: c | {"hidden_size": 128})
    _refused(folder, "says hidden_size = 128, but ", "embed_tokens.weight")


@pytest.mark.parametrize("family, name, text, expected", [
    ("qwen2_5_vl", "video_preprocessor_config.json", "{", "video_preprocessor_config.json is not valid JSON"),
    ("qwen3_vl", "video_preprocessor_config.json", "[]", "video_preprocessor_config.json holds a JSON list"),
    ("qwen2_5_vl", "video_preprocessor_config.json", '{"max_pixels": -5}', "has max_pixels = -5, not a positive"),
    ("qwen3_vl", "video_preprocessor_config.json", '{"patch_size": "16"}', 'has patch_size = "16", not a positive'),
    ("qwen3_vl", "video_preprocessor_config.json", '{"size": 5}', "has size = 5, not an object"),
    ("qwen2_5_vl", "video_preprocessor_config.json", '{"min_pixels": 900, "max_pixels": 800}',
     "has min_pixels 900 above max_pixels 800"),
    ("qwen2_5_vl", "chat_template.json", "{", "chat_template.json is not valid JSON"),
    ("qwen3_vl", "tokenizer_config.json", "{", "tokenizer_config.json is not valid JSON"),
])
def test_a_damaged_qwen_side_file_is_named(transformers_copy, family: str, name: str, text: str, expected: str) -> None:
    folder = transformers_copy(family)
    (folder / name).write_text(text)
    _refused(folder, str(folder / name), expected)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_null_in_the_video_processor_file_means_the_default(transformers_copy, family: str) -> None:
    """As transformers reads it: a null setting is unset (it was a TypeError from comparing None, or a None
    patch size used silently)."""
    from fastervlm.models.base import adapter_for
    from fastervlm.models.qwen_frames import read_frame_settings

    folder = transformers_copy(family)
    file = folder / "video_preprocessor_config.json"
    saved = json.loads(file.read_text())
    defaults = adapter_for(folder).frame_defaults
    stock = read_frame_settings(folder, defaults)
    nulled = {key: None for key in ("min_pixels", "max_pixels", "patch_size", "max_video_tokens") if key not in saved}
    file.write_text(json.dumps(saved | nulled))
    assert nulled and read_frame_settings(folder, defaults) == stock
