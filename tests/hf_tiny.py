"""Tiny transformers-format checkpoints for the test_hf_* files: written once per session, loaded from disk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastervlm.tiny.hf import FAMILIES as ALL_FAMILIES
from fastervlm.tiny.hf import MODEL_CLASSES, TinyHFSpec, tiny_tokenizer, tokenizer_for, uses_qwen_tokenizer, \
    write_tiny_hf_checkpoint

SPEC = TinyHFSpec()
_CACHE: dict[str, Any] = {}
QWEN_FAMILIES = tuple(family for family in ALL_FAMILIES if uses_qwen_tokenizer(family))
FAMILIES = tuple(family for family in ALL_FAMILIES if family not in QWEN_FAMILIES)
"""The LLaVA-style families whose inputs the helpers below build (the Qwen-VL families: tests/qwen_tiny.py)."""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine it costs several times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tokenizer() -> Any:
    if "tokenizer" not in _CACHE:
        _CACHE["tokenizer"] = tiny_tokenizer(SPEC)
    return _CACHE["tokenizer"]


def checkpoint(family: str, factory: pytest.TempPathFactory | None) -> Path:
    """The tiny checkpoint folder of `family` (one per session; the factory is needed on first use)."""
    if family not in _CACHE:
        own = qwen_tokenizer() if family in QWEN_FAMILIES else tokenizer()
        _CACHE[family] = write_tiny_hf_checkpoint(factory.mktemp(family), family, SPEC, tokenizer=own)
    return _CACHE[family]


def qwen_tokenizer() -> Any:
    """The tiny Qwen-VL tokenizer (byte-level BPE with Qwen's special tokens), built once per session."""
    if "qwen tokenizer" not in _CACHE:
        _CACHE["qwen tokenizer"] = tokenizer_for(QWEN_FAMILIES[0], SPEC)
    return _CACHE["qwen tokenizer"]


def stock_model(family: str, factory: pytest.TempPathFactory) -> torch.nn.Module:
    """A fresh stock model from the checkpoint, loaded by the user's own call (transformers' from_pretrained)."""
    import transformers

    cls = getattr(transformers, MODEL_CLASSES[family])
    return cls.from_pretrained(checkpoint(family, factory), dtype=torch.float32, attn_implementation="sdpa").eval()


def family_fixture(families: tuple[str, ...]) -> Any:
    """A module-scoped `family` fixture over `families`, each tiny checkpoint written on first use."""

    @pytest.fixture(scope="module", params=families)
    def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
        checkpoint(request.param, tmp_path_factory)
        return request.param

    return family


@pytest.fixture(scope="module")
def model(family: str, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """The family's stock model, loaded from its checkpoint by the user's own call."""
    return stock_model(family, tmp_path_factory)


NEW_TOKENS = 5


def greedy(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Greedy decoding that never stops early, so every sample yields NEW_TOKENS comparable tokens."""
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                              pad_token_id=model.config.text_config.pad_token_id)


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def pixels(family: str, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random preprocessed pixels under the keyword the family's model takes."""
    generator = torch.Generator().manual_seed(seed)
    size = SPEC.image_size
    if family == "llava":
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}
    return {"pixel_values_videos": torch.randn(batch, SPEC.num_frames, 3, size, size, generator=generator)}


MARKER = {"llava": "<image>", "video_llava": "<video>", "llava_next_video": "<video>", "llava_onevision": "<video>"}
TRAILING = {"llava_onevision": 1}
"""Tokens a family's stock model appends after each video's visual tokens (OneVision's newline)."""
RANKING = {"llava_onevision": {"score": "received"}}
"""Settings that let the [CLS]-ranking methods run on a family (encoders without [CLS]: the received score)."""


def ranking(family: str) -> dict[str, str]:
    return RANKING.get(family, {})


def stock_placeholders(family: str, spec: TinyHFSpec = SPEC) -> int:
    """Placeholders per video/image as the families' processors expand them (processing_*.py formulas)."""
    side = spec.image_size // spec.patch_size
    patches = side**2
    return {"llava": patches, "video_llava": spec.num_frames * (patches + 1),
            "llava_next_video": patches // 4 * spec.num_frames,
            "llava_onevision": spec.num_frames * math.ceil(side / 2) ** 2 + 1}[family]


def processor_inputs(family: str, questions: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """What a user's processor call returns: the prompt text with the placeholder repeated, tokenised with left
    padding, plus the pixels (LLaVA: transformers' own LlavaProcessor, which needs no torchvision)."""
    tok = tokenizer()
    texts = [f"USER: {MARKER[family]}\n{question} ASSISTANT:" for question in questions]
    if family == "llava":
        from PIL import Image
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        processor = LlavaProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(checkpoint(family, None)),
                                   tokenizer=tok, patch_size=SPEC.patch_size, num_additional_image_tokens=1,
                                   vision_feature_select_strategy="default")
        rng = np.random.default_rng(seed)
        images = [Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 90, 3), dtype=np.uint8)) for i in range(len(texts))]
        out = processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="left")
        return dict(out)
    texts = [text.replace(MARKER[family], MARKER[family] * stock_placeholders(family)) for text in texts]
    out = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    return {"input_ids": out.input_ids, "attention_mask": out.attention_mask, **pixels(family, len(texts), seed)}


__all__ = ["FAMILIES", "NEW_TOKENS", "QWEN_FAMILIES", "SPEC", "family_fixture", "greedy", "logits", "model",
           "qwen_tokenizer", "TRAILING", "checkpoint", "one_thread", "pixels", "processor_inputs", "ranking", "stock_model",
           "stock_placeholders", "tokenizer"]
