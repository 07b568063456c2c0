"""A tiny Qwen2-style tokenizer, trained offline: byte-level BPE with Qwen's pre-tokenizer split and NFC, and the
special tokens the Qwen2.5-VL / Qwen3-VL hub checkpoints carry, saved as the hub's files (tokenizer.json,
tokenizer_config.json) by transformers' own Qwen2Tokenizer."""

from __future__ import annotations

from typing import Any

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
"""The pre-tokenizer split of Qwen2's tokenizer (tokenizer.json's Split pattern)."""
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
"""The hub checkpoints' special tokens, in their order (after the BPE vocabulary)."""
PLAIN_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>")
"""Added tokens that are not special (they survive skip_special_tokens), as on the hub."""
QWEN_PLACEHOLDERS = {"image": "<|image_pad|>", "video": "<|video_pad|>", "pad": "<|endoftext|>"}
_CORPUS = [
    "A man is playing a guitar on a stage while people watch him.",
    "What is the man doing in the video? He is cooking pasta in a small kitchen.",
    "The white square moves from left to right over a coloured background while a red bar falls.",
    "Describe the video. A dog runs across the grass and jumps over a log, then a cat sleeps.",
    "Is the person happy? Yes. How many people are there? Two. What colour is the car? Red.",
    "You are a helpful assistant. user assistant system 0.5 seconds 12.5 seconds 3 4 7 9",
]


def tiny_qwen_tokenizer(vocab_size: int) -> Any:
    """A real byte-level BPE tokenizer of about `vocab_size` entries plus Qwen's added tokens, as a
    transformers Qwen2Tokenizer (bos none, eos <|im_end|>, pad <|endoftext|>, as the hub's)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    bpe.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    bpe.add_tokens([AddedToken(token, special=False, normalized=False) for token in PLAIN_ADDED])
    return Qwen2Tokenizer(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          unk_token=None, errors="replace", add_prefix_space=False, model_max_length=131072)
