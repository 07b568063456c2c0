"""The [CLS]-free importance score: the mean attention each patch receives, computed from q/k a block of queries at
a time, equals the column mean of the full eager softmax(q k^T / sqrt(d)) map, and never holds that map."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fastervlm.scoring import received_attention, received_patch_scores

BATCH, HEADS, TOKENS, HEAD_DIM = 2, 3, 50, 8
SCALE = HEAD_DIM**-0.5


def _qk(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, HEADS, TOKENS, HEAD_DIM, generator=generator) * 2
    k = torch.randn(BATCH, HEADS, TOKENS, HEAD_DIM, generator=generator) * 2
    return q, k


def _eager_map(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (q @ k.transpose(-1, -2) * SCALE).softmax(dim=-1)  # (B, H, queries, keys)


@pytest.mark.parametrize("chunk", [1, 7, 10, 25, 50, 64])  # 7 does not divide 50; 64 exceeds it
def test_equals_the_column_mean_of_the_eager_map(chunk):
    q, k = _qk()
    expected = _eager_map(q, k).mean(dim=2).mean(dim=1)  # VisPruner: attentions.mean(dim=-2), then the head mean
    scores = received_attention(q, k, SCALE, chunk=chunk)
    assert scores.shape == (BATCH, TOKENS) and scores.dtype == torch.float32
    assert torch.allclose(scores, expected, atol=1e-5, rtol=0)
    assert torch.allclose(scores.sum(dim=-1), torch.ones(BATCH), atol=1e-5)


def test_with_cls_every_token_queries_and_the_cls_column_is_dropped_without_renormalising():
    q, k = _qk(1)
    expected = _eager_map(q, k).mean(dim=2).mean(dim=1)[:, 1:]
    scores = received_patch_scores(q, k, SCALE, has_cls=True, chunk=16)
    assert scores.shape == (BATCH, TOKENS - 1) and torch.allclose(scores, expected, atol=1e-5, rtol=0)
    assert torch.allclose(received_patch_scores(q, k, SCALE, has_cls=False, chunk=16), received_attention(q, k, SCALE))


class _SoftmaxSizes(TorchFunctionMode):
    """Records the shape of every softmax input."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[torch.Size] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in (torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax):
            self.shapes.append(args[0].shape)
        return func(*args, **(kwargs or {}))


def test_holds_at_most_chunk_query_rows_at_once():
    q, k = _qk(2)
    with _SoftmaxSizes() as sizes:
        received_attention(q, k, SCALE, chunk=16)
    assert [shape[2] for shape in sizes.shapes] == [16, 16, 16, 2]
    assert all(shape[3] == TOKENS for shape in sizes.shapes)


def test_half_precision_inputs_score_in_fp32():
    q, k = _qk(3)
    scores = received_attention(q.half(), k.half(), SCALE, chunk=9)
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, received_attention(q.half().float(), k.half().float(), SCALE), atol=1e-6)
