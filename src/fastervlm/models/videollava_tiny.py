"""The tiny spec of original-format Video-LLaVA: random checkpoints in exactly the original on-disk formats, for
tests, the demo and the benchmark (`fastervlm.tiny` is the entry point).

`write_tiny_checkpoint(root)` writes two folders, as a user who downloaded the real models has them:
- `Video-LLaVA-7B/`: config.json with the Llama and mm_* fields, generation_config.json, a real SentencePiece
  tokenizer.model with tokenizer_config.json and special_tokens_map.json, and sharded weights (safetensors or
  pytorch .bin with its index) holding `model.*`, `lm_head.weight`, `model.mm_projector.*` and the tower copy
  `model.video_tower.video_tower.*` that the original ignores;
- `LanguageBind_Video_merge/`: a CLIPModel-style config.json (text_config + vision_config with add_time_attn and
  num_frames) and one pytorch_model.bin holding a text model and the `vision_model.*` weights.
The LLM config's mm_video_tower is the relative path "../LanguageBind_Video_merge", resolved from the checkpoint.
Loading them goes through the same code as the real checkpoints. Everything is seeded: the same spec gives the
same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from fastervlm.models.base import TinySizes

GENERATOR_VERSION = 4
"""Bump when the generated files change, so that cached tiny checkpoints are rewritten (3: the tiny marker; 4: config.json
carries the real checkpoint's `rope_scaling: null`)."""
LLM_DIR = "Video-LLaVA-7B"
TOWER_DIR = "LanguageBind_Video_merge"


@dataclass(frozen=True)
class TinySpec(TinySizes):
    """Sizes of a tiny original-format Video-LLaVA (LanguageBind tower). The defaults keep every test fast;
    `real_shape()` has the real token counts."""

    @staticmethod
    def real_shape() -> TinySpec:
        """224 px, patch 14: 256 patches per frame, 2048 video tokens, as Video-LLaVA-7B; tiny widths."""
        return TinySpec(image_size=224)

    @staticmethod
    def video_llava_7b(llm_layers: int = 2, vision_layers: int = 3) -> TinySpec:
        """Video-LLaVA-7B's real widths, heads and token counts with fewer layers (benchmarks: per-layer costs are real)."""
        return TinySpec(image_size=224, vision_width=1024, vision_intermediate=4096, vision_layers=vision_layers,
                        vision_heads=16, llm_width=4096, llm_intermediate=11008, llm_layers=llm_layers, llm_heads=32)

    def key(self) -> str:
        """Names the cache folder: changes with the sizes and with how the weights are generated."""
        fields = {**asdict(self), "generator": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "USER: What is the man doing in the video? ASSISTANT: The man is playing a guitar on a stage.",
    "What does the butterfly do 10 or more than 10 times ? flap wings",
    "who opened the box that held an automatic weapon in a gun? is the athlete wearing trousers yes no",
    "what is the video doing? a woman is slicing an onion. a dog runs across the grass and jumps.",
    "The white square moves from left to right over a coloured background while a red bar falls.",
]


def train_tokenizer(vocab_size: int) -> bytes:
    """A real SentencePiece BPE model with Llama's special ids (<unk> 0, <s> 1, </s> 2) and byte fallback."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 8), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    return model.getvalue()


def _randomize(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights with enough spread that attention is far from uniform, rounded to bf16 values so that a
    bf16 checkpoint read back in fp32 is bit-identical to the in-memory model."""
    out = {}
    for name, tensor in sorted(state.items()):
        if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight") or "layrnorm.weight" in name:
            value = 1.0 + 0.1 * torch.randn(tensor.shape, generator=generator)
        elif tensor.ndim >= 2:
            fan_in = math.prod(tensor.shape[1:])
            value = torch.randn(tensor.shape, generator=generator) * (1.5 / math.sqrt(fan_in))
        else:
            value = 0.3 * torch.randn(tensor.shape, generator=generator)
        out[name] = value.to(torch.bfloat16).to(torch.float32)
    return out


def _readable_output_head(llm: dict[str, torch.Tensor], spec: TinySpec) -> dict[str, torch.Tensor]:
    """Zero the LM-head rows of the byte-fallback pieces: a random model then babbles words, not broken UTF-8."""
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=train_tokenizer(spec.vocab_size))
    head = llm["lm_head.weight"].clone()
    head[[i for i in range(pieces.get_piece_size()) if pieces.is_byte(i) or pieces.is_unknown(i)]] = 0.0
    return {**llm, "lm_head.weight": head}


def vision_config(spec: TinySpec) -> dict:
    """The tower's vision_config, with the field names of LanguageBind's published config.json."""
    return {
        "hidden_size": spec.vision_width, "intermediate_size": spec.vision_intermediate,
        "num_hidden_layers": spec.vision_layers, "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size, "patch_size": spec.patch_size, "num_channels": 3, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "add_time_attn": True, "num_frames": spec.num_frames,
        "force_patch_dropout": 0.0, "lora_r": 0, "lora_alpha": 16, "lora_dropout": 0.1, "clip_type": "vl",
        "num_mel_bins": 0, "target_length": 0, "video_decode_backend": "decord", "projection_dim": 16,
        "model_type": "clip_vision_model",
    }


def llm_config(spec: TinySpec, tower_path: str) -> dict:
    """config.json of the LLM checkpoint: the Llama fields plus the original's mm_* fields."""
    return {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": spec.llm_width,
        "intermediate_size": spec.llm_intermediate, "num_hidden_layers": spec.llm_layers,
        "num_attention_heads": spec.llm_heads, "num_key_value_heads": spec.llm_heads, "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "vocab_size": spec.vocab_size, "max_position_embeddings": 4096, "rope_scaling": None,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
        "initializer_range": 0.02, "torch_dtype": "bfloat16", "use_cache": True,
        "mm_hidden_size": spec.vision_width, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad", "mm_video_tower": tower_path, "mm_image_tower": "LanguageBind/LanguageBind_Image",
        "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False,
    }


@dataclass
class TinyWeights:
    """The in-memory weights a tiny checkpoint is written from (tests compare them with what loads back)."""

    llm: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor]
    tower: dict[str, torch.Tensor]
    text_model: dict[str, torch.Tensor]


def tiny_weights(spec: TinySpec) -> TinyWeights:
    """Seeded random weights with the real key names (module structures built from the real classes)."""
    from transformers import LlamaForCausalLM

    from fastervlm.models.languagebind import LanguageBindVideoTower, vision_config_from_dict
    from fastervlm.models.videollava import build_projector, llama_config

    generator = torch.Generator().manual_seed(spec.seed)
    config = llm_config(spec, "")
    with torch.device("meta"):
        llm = LlamaForCausalLM(llama_config(config)).state_dict()
        tower = LanguageBindVideoTower(vision_config_from_dict(vision_config(spec))).state_dict()
        projector = build_projector(config).state_dict()
    width = spec.vision_width
    text_model = {
        "text_model.embeddings.token_embedding.weight": torch.empty(64, width),
        "text_model.embeddings.position_embedding.weight": torch.empty(16, width),
        "text_model.final_layer_norm.weight": torch.empty(width),
        "text_model.final_layer_norm.bias": torch.empty(width),
        "visual_projection.weight": torch.empty(16, width),
        "text_projection.weight": torch.empty(16, width),
        "logit_scale": torch.empty(()),
    }
    return TinyWeights(
        llm=_readable_output_head(_randomize(llm, generator), spec),
        projector=_randomize(projector, generator),
        tower=_randomize({f"vision_model.{k}" if not k.startswith("vision_model.") else k: v for k, v in tower.items()}, generator),
        text_model=_randomize(text_model, generator),
    )


def _write_sharded(directory: Path, state: dict[str, torch.Tensor], weights_format: str, shards: int) -> None:
    """Write `state` as transformers does: N shards plus an index (or one file when shards == 1)."""
    names = sorted(state)
    groups = [names[i::shards] for i in range(shards)]
    suffix, index_name = ("safetensors", "model.safetensors.index.json") if weights_format == "safetensors" else (
        "bin", "pytorch_model.bin.index.json")
    stem = "model" if weights_format == "safetensors" else "pytorch_model"
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        file = f"{stem}-{number:05d}-of-{shards:05d}.{suffix}" if shards > 1 else f"{stem}.{suffix}"
        part = {k: state[k].to(torch.bfloat16).contiguous() for k in group}
        if weights_format == "safetensors":
            save_file(part, str(directory / file), metadata={"format": "pt"})
        else:
            torch.save(part, directory / file)
        weight_map.update({k: file for k in group})
    if shards > 1:
        total = sum(t.numel() * 2 for t in state.values())
        (directory / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_tokenizer(directory: Path, spec: TinySpec) -> None:
    (directory / "tokenizer.model").write_bytes(train_tokenizer(spec.vocab_size))
    token = lambda text: {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": False,  # noqa: E731
                          "rstrip": False, "single_word": False}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": token("<s>"), "eos_token": token("</s>"),
        "unk_token": token("<unk>"), "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 4096, "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    }, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2))


def write_tiny_checkpoint(
    root: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    *,
    weights_format: str = "safetensors",
    shards: int = 2,
) -> Path:
    """Write the two checkpoint folders under `root`; returns the LLM checkpoint folder."""
    if weights_format not in ("safetensors", "bin"):
        raise ValueError("weights_format is 'safetensors' or 'bin'")
    root = Path(root)
    llm_dir, tower_dir = root / LLM_DIR, root / TOWER_DIR
    llm_dir.mkdir(parents=True, exist_ok=True)
    tower_dir.mkdir(parents=True, exist_ok=True)
    weights = tiny_weights(spec)

    (tower_dir / "config.json").write_text(json.dumps({
        "architectures": ["CLIPModel"], "model_type": "LanguageBindVideo", "projection_dim": 16,
        "logit_scale_init_value": 2.6592, "torch_dtype": "float32",
        "text_config": {"hidden_size": spec.vision_width, "vocab_size": 64, "max_position_embeddings": 16,
                        "num_hidden_layers": 0, "model_type": "clip_text_model"},
        "vision_config": vision_config(spec),
    }, indent=2))
    torch.save({**weights.text_model, **weights.tower}, tower_dir / "pytorch_model.bin")

    (llm_dir / "config.json").write_text(json.dumps(llm_config(spec, f"../{TOWER_DIR}"), indent=2))
    (llm_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "temperature": 0.9, "top_p": 0.6,
         "max_length": 4096, "transformers_version": "4.31.0"}, indent=2))
    _write_tokenizer(llm_dir, spec)
    tower_copy = {f"model.video_tower.video_tower.{k}": v for k, v in weights.tower.items()}
    projector = {f"model.mm_projector.{k}": v for k, v in weights.projector.items()}
    _write_sharded(llm_dir, {**weights.llm, **projector, **tower_copy}, weights_format, shards)
    from fastervlm.models.videollava import VideoLlavaAdapter
    from fastervlm.tiny.identity import mark_tiny

    mark_tiny(llm_dir, VideoLlavaAdapter.family)  # its outputs say it is the tiny random model; short answers
    return llm_dir


def build_adapter(
    spec: TinySpec,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: TinyWeights | None = None,
):
    """A VideoLlavaAdapter for `spec` built in memory from `tiny_weights(spec)` (or the `weights` given): no weight
    files are written, which matters for `TinySpec.video_llava_7b` (GBs at real widths). Only the tokenizer goes
    through a temporary folder. The weight tensors are used as they are when device and dtype match (so tensors
    in shared memory stay shared with the process that made them).
    """
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    from fastervlm.models.languagebind import LanguageBindVideoTower, vision_config_from_dict
    from fastervlm.models.videollava import VideoLlavaAdapter, build_projector, llama_config

    weights = weights if weights is not None else tiny_weights(spec)
    config = llm_config(spec, "")
    with no_init_weights():  # every parameter is replaced by the given tensors below
        llm = LlamaForCausalLM(llama_config(config, attn_implementation="sdpa"))
        tower = LanguageBindVideoTower(vision_config_from_dict(vision_config(spec)))
        projector = build_projector(config)
    llm.load_state_dict(weights.llm, assign=True)
    tower.load_state_dict(weights.tower, assign=True)
    projector.load_state_dict(weights.projector, assign=True)
    llm.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with tempfile.TemporaryDirectory(prefix="fastervlm-tokenizer-") as folder:
        _write_tokenizer(Path(folder), spec)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    modules = [module.to(device=device, dtype=dtype).eval() for module in (llm, tower, projector)]
    llm, tower, projector = modules
    return VideoLlavaAdapter(llm, projector, tower, tokenizer, config, GenerationConfig())
