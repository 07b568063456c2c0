"""VisPruner against a plain re-statement of its published algorithm (Python lists and loops), per frame and over
the whole video, at budgets that leave odd remaining counts (where the reference code breaks)."""

from __future__ import annotations

import pytest
import torch

from fastervlm.errors import BudgetError
from fastervlm.methods import VisualTokens, create_pruner

FRAMES, PATCHES, WIDTH = 3, 64, 12


def restated_vispruner(features: torch.Tensor, scores: list[float], budget: int, ratio: float = 0.5) -> list[int]:
    """VisPruner on one pool of tokens, written out: important by score, then repeated similarity removal."""
    important = int(budget * ratio)
    target = budget - important
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # descending, lower index first on ties
    kept, remaining = order[:important], order[important:]
    unit = features.double() / features.double().norm(dim=-1, keepdim=True)
    cosine = (unit @ unit.T).tolist()
    while target > 0 and len(remaining) > target:
        r = min(8, len(remaining) - target)
        a, b = remaining[0::2], remaining[1::2]  # a: even positions, the last one too when the count is odd
        similarity = [max(cosine[i][j] for j in b) for i in a]
        by_similarity = sorted(range(len(a)), key=lambda p: (-similarity[p], p))
        remaining = [a[p] for p in by_similarity[r:]] + b
    return sorted(kept + (remaining if target > 0 else []))


def _inputs(seed: int, frames: int = FRAMES, patches: int = PATCHES) -> VisualTokens:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, patches, WIDTH, generator=generator)
    return VisualTokens(features, cls_scores=torch.rand(frames, patches, generator=generator))


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 5, 13, 26, 33, 50, 63, 64])
@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.0, 1.0])
def test_per_frame_equals_the_restated_algorithm(keep, ratio):
    encoded = _inputs(seed=keep)
    selection = create_pruner("vispruner", keep=keep, important_ratio=ratio).select(encoded)
    for frame in range(FRAMES):
        expected = restated_vispruner(encoded.features[frame], encoded.cls_scores[frame].tolist(), keep, ratio)
        assert selection.kept_indices[frame].tolist() == expected
    assert selection.tokens_per_frame == [keep] * FRAMES
    assert torch.equal(selection.features, torch.cat([f[i] for f, i in zip(encoded.features, selection.kept_indices)]))


def test_video_llava_budget_with_an_odd_remainder():
    """26 of 256: 13 important leave 243 to thin, an odd count from the first step on."""
    encoded = _inputs(seed=7, frames=2, patches=256)
    selection = create_pruner("vispruner", reduction=0.9).select(encoded)
    for frame in range(2):
        assert selection.kept_indices[frame].tolist() == restated_vispruner(
            encoded.features[frame], encoded.cls_scores[frame].tolist(), 26)


@pytest.mark.parametrize("keep", [1, 5, 26, 40])
def test_global_budget_is_the_algorithm_over_the_whole_video(keep):
    encoded = _inputs(seed=100 + keep)
    selection = create_pruner("vispruner", keep=keep, global_budget=True).select(encoded)
    flat = restated_vispruner(encoded.features.reshape(-1, WIDTH), encoded.cls_scores.flatten().tolist(), FRAMES * keep)
    assert [i.tolist() for i in selection.kept_indices] == [
        [i % PATCHES for i in flat if i // PATCHES == frame] for frame in range(FRAMES)]
    assert selection.tokens_per_frame == [len(i) for i in selection.kept_indices]
    assert sum(selection.tokens_per_frame) == FRAMES * keep


def test_diversity_drops_duplicates():
    """Beyond the important patches, a patch repeated many times is kept at most once or twice."""
    features = torch.randn(1, 32, WIDTH, generator=torch.Generator().manual_seed(3))
    features[0, 16:] = features[0, 16]  # patches 16..31 are one token repeated
    scores = torch.linspace(1.0, 0.0, 32).unsqueeze(0)  # patch 0 is the most important
    kept = create_pruner("vispruner", keep=8).select(VisualTokens(features, scores)).kept_indices[0].tolist()
    assert kept[:4] == [0, 1, 2, 3]  # the important half
    assert sum(1 for i in kept if i >= 16) <= 2


@pytest.mark.parametrize("settings", [{"important_ratio": 1.5}, {"important_ratio": "half"}, {"score": "max"},
                                      {"global_budget": "yes"}])
def test_bad_settings_are_clear_errors(settings):
    with pytest.raises(BudgetError, match=next(iter(settings))):
        create_pruner("vispruner", keep=4, **settings)
