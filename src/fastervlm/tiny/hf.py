"""Tiny random checkpoints in transformers' own format, for tests, the demo and the benchmark.

`write_tiny_hf_checkpoint(folder, family)` builds the config with transformers' own config classes and saves
what a hub download holds: config.json and safetensors (save_pretrained), generation_config.json, a Llama
tokenizer (SentencePiece, converted by transformers) with the <image>/<video>/<pad> tokens added as the hub
checkpoints have them (the Qwen-VL families: a byte-level BPE tokenizer with Qwen's special tokens,
`tiny.qwen_tokenizer`), preprocessor_config.json (and the video processor's), and a chat template where the real
checkpoint ships one (LLaVA-1.5: chat_template.json beside the processor; NeXT-Video: chat_template.jinja;
Video-LLaVA: none, so the model card's prompt is used). Loading goes through `fastervlm.load`, like a real checkpoint. Seeded: the same
spec gives the same weights.

Each family's config comes from its own tiny spec beside its adapter (`tiny_config`, `write_tiny_processor`);
this file holds what they share. `tiny_hf_config(family)` also covers the families fastervlm refuses for their
vision encoder without [CLS] token (Qwen2-VL; its spec sits in models/hf_no_cls.py), for the error they get.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastervlm.models.base import TinySizes
from fastervlm.models.hf_base import TinyParts, hf_families
from fastervlm.models.hf_no_cls import TINY_CONFIGS as _NO_CLS_TINY
from fastervlm.models.qwen_base import QwenAdapter
from fastervlm.tiny.identity import mark_tiny

FAMILIES = tuple(cls.model_types[0] for cls in hf_families())
"""The transformers families fastervlm runs, by model_type (each has a tiny spec beside its adapter)."""
NO_CLS_FAMILIES = tuple(_NO_CLS_TINY)
"""Families whose encoder has no [CLS] token: config-only tiny specs, for the refusal they get."""
MODEL_CLASSES = {**{cls.model_types[0]: cls.model_class for cls in hf_families()},
                 **{name: model_class for name, (model_class, _) in _NO_CLS_TINY.items()}}
# In the style of the llava-hf templates: media placeholders first, then the text, then "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] if item['type'] in ('image', 'video') %}<{{ item['type'] }}>\n{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }} {% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
PLACEHOLDERS = {"image": "<image>", "video": "<video>", "pad": "<pad>"}
QWEN_PLACEHOLDERS = {"image": "<|image_pad|>", "video": "<|video_pad|>", "pad": "<|endoftext|>",
                     "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>"}
"""The special tokens a Qwen-VL config names, in the tiny Qwen tokenizer."""


@dataclass(frozen=True)
class TinyHFSpec(TinySizes):
    """Sizes of a tiny transformers VLM: 84 px / patch 14 = 36 patches per frame (9 after NeXT's 2 x 2 pooling)."""

    image_size: int = 84
    llm_kv_heads: int = 2
    """Fewer key/value heads than heads (grouped-query attention), so the KV-cache figures are checked on it."""


def tiny_tokenizer(spec: TinyHFSpec = TinyHFSpec()) -> Any:
    """A real SentencePiece Llama tokenizer (BOS added) with the placeholder and pad tokens appended."""
    from transformers import AutoTokenizer

    from fastervlm.models.videollava_tiny import train_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "tokenizer.model").write_bytes(train_tokenizer(spec.vocab_size))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 4096,
        }))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"pad_token": PLACEHOLDERS["pad"],
                                  "additional_special_tokens": [PLACEHOLDERS["image"], PLACEHOLDERS["video"]]})
    return tokenizer


def uses_qwen_tokenizer(family: str) -> bool:
    """The Qwen-VL families take Qwen's byte-level BPE tokenizer and special tokens."""
    return family in FAMILIES and issubclass(_adapter(family), QwenAdapter)


def tokenizer_for(family: str, spec: TinyHFSpec = TinyHFSpec()) -> Any:
    """The tiny tokenizer of the family's kind: Qwen's byte-level BPE, or Llama's SentencePiece."""
    from fastervlm.tiny.qwen_tokenizer import tiny_qwen_tokenizer

    return tiny_qwen_tokenizer(spec.vocab_size) if uses_qwen_tokenizer(family) else tiny_tokenizer(spec)


def tiny_parts(tokenizer: Any, spec: TinyHFSpec = TinyHFSpec()) -> TinyParts:
    """The Llama text config, CLIP vision config and placeholder ids every family's tiny config is built from."""
    placeholders = QWEN_PLACEHOLDERS if QWEN_PLACEHOLDERS["video"] in tokenizer.get_vocab() else PLACEHOLDERS
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in placeholders.items()}
    text = dict(model_type="llama", hidden_size=spec.llm_width, intermediate_size=spec.llm_intermediate,
                num_hidden_layers=spec.llm_layers, num_attention_heads=spec.llm_heads,
                num_key_value_heads=spec.llm_kv_heads, vocab_size=len(tokenizer), max_position_embeddings=4096,
                pad_token_id=ids["pad"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    clip = dict(model_type="clip_vision_model", hidden_size=spec.vision_width, intermediate_size=spec.vision_intermediate,
                num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=16)
    patches = (spec.image_size // spec.patch_size) ** 2
    return TinyParts(text, clip, ids, patches, spec.num_frames, spec.image_size)


def tiny_hf_config(family: str, tokenizer: Any, spec: TinyHFSpec = TinyHFSpec()) -> Any:
    """The family's config, built by its tiny spec with transformers' own config class, sized by `spec`."""
    parts = tiny_parts(tokenizer, spec)
    if family in _NO_CLS_TINY:
        return _NO_CLS_TINY[family][1](parts)
    return _adapter(family).tiny_config(parts)


def _adapter(family: str) -> Any:
    found = {cls.model_types[0]: cls for cls in hf_families()}
    if family not in found:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES + NO_CLS_FAMILIES}")
    return found[family]


def tiny_hf_model(family: str, tokenizer: Any, spec: TinyHFSpec = TinyHFSpec()) -> Any:
    """A seeded random model of the family (SDPA everywhere), in memory."""
    import torch
    import transformers

    torch.manual_seed(spec.seed)
    model = getattr(transformers, MODEL_CLASSES[family])(tiny_hf_config(family, tokenizer, spec))
    return model.eval()


def write_tiny_hf_checkpoint(
    folder: str | Path, family: str, spec: TinyHFSpec = TinyHFSpec(), *, tokenizer: Any = None
) -> Path:
    """Save a tiny random checkpoint of `family` into `folder` (created); returns the folder."""
    from fastervlm.models.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    if family not in FAMILIES:
        raise ValueError(f"tiny checkpoints exist for {FAMILIES}; {family!r} is config-only (tiny_hf_config)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or tokenizer_for(family, spec)
    tiny_hf_model(family, tokenizer, spec).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = spec.image_size
    frame = {"do_resize": True, "size": {"shortest_edge": size}, "do_center_crop": True,
             "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3,
             "do_convert_rgb": True}
    _adapter(family).write_tiny_processor(folder, frame, tiny_parts(tokenizer, spec))
    mark_tiny(folder, _adapter(family).family)  # its outputs say it is a tiny random model; short answers
    return folder


