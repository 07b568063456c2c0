"""vLLM's own Llama and Qwen2, reading the LLM's tensors out of a whole fastervlm checkpoint.

vLLM imports this module by name in its own processes (the `model_class_overrides` that `backends/vllm_text.py`
names), never fastervlm: it imports vLLM at the top, and of fastervlm only the leaf `vllm_names`. The only change
to vLLM's classes is the weight names they are fed (`text_weights`: tower and projector skipped, prefix renamed).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

from fastervlm.backends.vllm_names import text_weights


class FasterVLMLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama on a checkpoint's Llama LLM (Video-LLaVA original and -hf, LLaVA-1.5, NeXT-Video)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(text_weights(weights))


class FasterVLMQwen2ForCausalLM(Qwen2ForCausalLM):
    """vLLM's Qwen2 on a checkpoint's Qwen2 LLM (LLaVA-OneVision)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(text_weights(weights))
