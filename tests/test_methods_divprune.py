"""DivPrune against a plain re-statement of its published greedy max-min algorithm, per frame and over the whole
video; it keeps rows of the projected tokens and needs no attention score."""

from __future__ import annotations

import pytest
import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.methods import VisualTokens, create_pruner

FRAMES, PATCHES, WIDTH, LLM_WIDTH = 3, 49, 6, 16


def restated_divprune(tokens: torch.Tensor, budget: int) -> list[int]:
    """Greedy max-min diversity on one pool, written out: d(i, j) = 1 - cos(x_i, x_j); the first token is the one
    whose nearest other token is farthest, each next one the farthest from its closest chosen token."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    distance = (1.0 - unit @ unit.T).tolist()
    count = len(distance)
    chosen: list[int] = []
    for step in range(budget):
        if step == 0:
            score = [sorted(distance[s][j] for s in range(count))[1] for j in range(count)]
        else:
            score = [min(distance[s][j] for s in chosen) for j in range(count)]
        candidates = [j for j in range(count) if j not in chosen]
        chosen.append(max(candidates, key=lambda j: (score[j], -j)))  # the lower index on ties
    return sorted(chosen)


def _inputs(seed: int) -> VisualTokens:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(FRAMES, PATCHES, WIDTH, generator=generator)
    return VisualTokens(features, projected=torch.randn(FRAMES, PATCHES, LLM_WIDTH, generator=generator))


@pytest.mark.parametrize("keep", [0, 1, 2, 7, 24, 48, 49])
def test_per_frame_equals_the_restated_algorithm(keep):
    encoded = _inputs(keep)
    selection = create_pruner("divprune", keep=keep).select(encoded)
    for frame in range(FRAMES):
        assert selection.kept_indices[frame].tolist() == restated_divprune(encoded.projected[frame], keep)
    assert selection.projected and selection.tokens_per_frame == [keep] * FRAMES
    assert torch.equal(selection.features, torch.cat([p[i] for p, i in zip(encoded.projected, selection.kept_indices)]))


@pytest.mark.parametrize("keep", [1, 10, 30])
def test_global_budget_is_the_algorithm_over_the_whole_video(keep):
    encoded = _inputs(50 + keep)
    selection = create_pruner("divprune", keep=keep, global_budget=True).select(encoded)
    flat = restated_divprune(encoded.projected.reshape(-1, LLM_WIDTH), FRAMES * keep)
    assert [i.tolist() for i in selection.kept_indices] == [
        [i % PATCHES for i in flat if i // PATCHES == frame] for frame in range(FRAMES)]
    assert selection.tokens_per_frame == [len(i) for i in selection.kept_indices]


def test_duplicates_are_chosen_last_and_never_twice():
    projected = torch.randn(1, 12, LLM_WIDTH, generator=torch.Generator().manual_seed(4))
    projected[0, 6:] = projected[0, 0]  # tokens 0 and 6..11: seven copies of one token
    kept = create_pruner("divprune", keep=6).select(VisualTokens(torch.zeros(1, 12, WIDTH), projected=projected))
    assert kept.kept_indices[0].tolist() == list(range(6))  # the five distinct tokens and one copy, the first
    everything_but_one = create_pruner("divprune", keep=11).select(
        VisualTokens(torch.zeros(1, 12, WIDTH), projected=projected)).kept_indices[0]
    assert len(set(everything_but_one.tolist())) == 11


def test_needs_the_projected_tokens_only():
    pruner = create_pruner("divprune", keep=3)
    assert pruner.required_inputs() == {"projected"} and not pruner.needs_cls_scores
    with pytest.raises(UnsupportedModelError, match="projected visual tokens"):
        pruner.select(VisualTokens(torch.zeros(FRAMES, PATCHES, WIDTH)))
