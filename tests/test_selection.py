"""The selection core: per-frame top-L in raster order, stable ties, global budget, and the budget rules."""

from __future__ import annotations

import pytest
import torch

from fastervlm.errors import BudgetError
from fastervlm.selection import gather_tokens, keep_from_reduction, resolve_keep, topk_global, topk_per_frame


def _scores(frames: int = 4, patches: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, patches, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("keep", [0, 1, 5, 16])
def test_per_frame_counts_order_and_choice(keep):
    scores = _scores()
    indices = topk_per_frame(scores, keep)
    assert indices.shape == (4, keep)
    for frame, chosen in zip(scores, indices):
        assert torch.equal(chosen, chosen.sort().values)  # raster order
        best = set(frame.argsort(descending=True)[:keep].tolist())
        assert set(chosen.tolist()) == best


def test_keep_everything_is_the_identity_and_zero_is_empty():
    scores = _scores()
    assert torch.equal(topk_per_frame(scores, 16), torch.arange(16).expand(4, 16))
    assert topk_per_frame(scores, 0).shape == (4, 0)
    assert [len(i) for i in topk_global(scores, 0)] == [0, 0, 0, 0]


def test_ties_keep_the_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float16)
    assert topk_per_frame(scores, 2).tolist() == [[0, 1], [0, 1]]
    assert topk_per_frame(scores, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert [i.tolist() for i in topk_global(scores, 3)] == [[], [0, 1, 2]]  # five 1.0s beat 0.9: lowest flat indices
    assert [i.tolist() for i in topk_global(scores, 7)] == [[0, 1], [0, 1, 2, 3, 4]]  # then 0.9, then the first 0.5


def test_global_budget_keeps_the_best_over_all_frames():
    scores = _scores(frames=3, patches=10)
    scores[0] += 1.0  # frame 0 holds the best patches
    chosen = topk_global(scores, 12)
    assert sum(len(i) for i in chosen) == 12
    assert len(chosen[0]) == 10
    flat = set((scores.flatten().argsort(descending=True)[:12]).tolist())
    assert {f * 10 + p for f, frame in enumerate(chosen) for p in frame.tolist()} == flat
    assert all(torch.equal(i, i.sort().values) for i in chosen)


def test_gather_takes_the_tokens_frame_after_frame():
    features = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    indices = torch.tensor([[0, 3], [1, 4]])
    expected = torch.stack([features[0, 0], features[0, 3], features[1, 1], features[1, 4]])
    assert torch.equal(gather_tokens(features, indices), expected)
    assert torch.equal(gather_tokens(features, list(indices)), expected)


@pytest.mark.parametrize("reduction,keep", [(0.0, 256), (0.25, 192), (0.5, 128), (0.75, 64), (0.9, 26), (0.95, 13), (1.0, 0)])
def test_keep_from_reduction_matches_the_seed_table(reduction, keep):
    assert keep_from_reduction(256, reduction) == keep
    assert resolve_keep(256, reduction=reduction) == keep


def test_resolve_keep():
    assert resolve_keep(256) == 256
    assert resolve_keep(256, keep=7) == 7


@pytest.mark.parametrize("settings", [{"keep": 257}, {"keep": -1}, {"keep": 2.5}, {"keep": True}, {"reduction": 1.5},
                                      {"reduction": -0.1}, {"keep": 3, "reduction": 0.5}])
def test_invalid_budgets_raise(settings):
    with pytest.raises(BudgetError):
        resolve_keep(256, **settings)


def test_impossible_counts_raise():
    with pytest.raises(BudgetError):
        topk_per_frame(_scores(), 17)
    with pytest.raises(BudgetError):
        topk_global(_scores(), 65)
