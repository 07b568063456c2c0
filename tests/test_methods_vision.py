"""Vision-stage methods: random (seeded), pool (exactly L merged tokens per frame), fastervlm's global budget,
and each of them on the tiny Video-LLaVA."""

from __future__ import annotations

import pytest
import torch

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.methods import VisualTokens, create_pruner
from fastervlm.methods.pool import pooling_matrix

FRAMES, GRID, WIDTH = 4, 8, 6


def _features(seed: int = 0) -> torch.Tensor:
    return torch.randn(FRAMES, GRID * GRID, WIDTH, generator=torch.Generator().manual_seed(seed))


# ----- random ------------------------------------------------------------------------------------------------------
def test_random_is_reproducible_with_a_seed():
    features = _features()
    first = create_pruner("random", keep=10, seed=3).select(VisualTokens(features))
    again = create_pruner("random", keep=10, seed=3).select(VisualTokens(_features(seed=1)))  # content does not matter
    other = create_pruner("random", keep=10, seed=4).select(VisualTokens(features))
    assert [i.tolist() for i in first.kept_indices] == [i.tolist() for i in again.kept_indices]
    assert [i.tolist() for i in first.kept_indices] != [i.tolist() for i in other.kept_indices]
    assert len({tuple(i.tolist()) for i in first.kept_indices}) > 1  # frames get different draws


def test_random_keeps_l_per_frame_in_raster_order():
    features = _features()
    selection = create_pruner("random", reduction=0.75).select(VisualTokens(features))
    assert selection.tokens_per_frame == [16] * FRAMES
    for frame, indices in zip(features, selection.kept_indices):
        assert len(indices.unique()) == 16 and torch.equal(indices, indices.sort().values)
    expected = torch.cat([frame[indices] for frame, indices in zip(features, selection.kept_indices)])
    assert torch.equal(selection.features, expected)
    assert create_pruner("random", keep=0).select(VisualTokens(features)).features.shape == (0, WIDTH)


def test_random_draws_are_uniform():
    counts = torch.zeros(GRID * GRID)
    for seed in range(300):
        for indices in create_pruner("random", keep=8, seed=seed).select(VisualTokens(_features())).kept_indices:
            counts[indices] += 1
    expected = 300 * FRAMES * 8 / (GRID * GRID)  # 150 per patch
    assert (counts - expected).abs().max() < 0.3 * expected


def test_random_rejects_a_bad_seed():
    with pytest.raises(BudgetError, match="seed"):
        create_pruner("random", seed="x")


# ----- pool ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 1, 3, 7, 16, 26, 40, 63, 64])
def test_pool_keeps_exactly_l_per_frame(keep):
    features = _features()
    selection = create_pruner("pool", keep=keep).select(VisualTokens(features))
    assert selection.features.shape == (FRAMES * keep, WIDTH)
    assert selection.tokens_per_frame == [keep] * FRAMES
    assert selection.kept_indices is None  # merged, not selected


@pytest.mark.parametrize("grid,cells", [(8, 26), (16, 26), (16, 13), (16, 192), (16, 250), (8, 1)])
def test_pool_rectangles_tile_the_grid(grid, cells):
    weights = pooling_matrix(grid, cells)
    owners = (weights > 0).sum(dim=0)
    assert (owners == 1).all()  # every patch in exactly one cell
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(cells))  # each cell is a mean
    for row in weights:  # each cell is a rectangle
        cell = (row > 0).view(grid, grid)
        rows, cols = cell.any(1).nonzero().flatten(), cell.any(0).nonzero().flatten()
        assert cell.sum() == len(rows) * len(cols) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_pool_is_average_pooling_and_the_identity_at_full_budget():
    features = _features()
    square = create_pruner("pool", keep=16).select(VisualTokens(features)).features.view(FRAMES, 16, WIDTH)
    image = features.view(FRAMES, GRID, GRID, WIDTH).permute(0, 3, 1, 2)
    expected = torch.nn.functional.avg_pool2d(image, 2).permute(0, 2, 3, 1).reshape(FRAMES, 16, WIDTH)
    torch.testing.assert_close(square, expected)
    everything = create_pruner("pool", keep=GRID * GRID).select(VisualTokens(features)).features
    assert torch.equal(everything, features.reshape(-1, WIDTH))


def test_pool_needs_a_square_grid():
    with pytest.raises(UnsupportedModelError, match="square"):
        create_pruner("pool", keep=3).select(VisualTokens(torch.zeros(2, 10, 4)))


# ----- fastervlm global budget --------------------------------------------------------------------------------------
def test_fastervlm_global_budget_keeps_frames_times_l_in_total():
    features = _features()
    scores = torch.rand(FRAMES, GRID * GRID, generator=torch.Generator().manual_seed(2))
    scores[1] += 1.0  # frame 1 is the most attended: a global budget gives it more than L
    per_frame = create_pruner("fastervlm", keep=10).select(VisualTokens(features, scores))
    global_ = create_pruner("fastervlm", keep=10, global_budget=True).select(VisualTokens(features, scores))
    assert per_frame.tokens_per_frame == [10] * FRAMES
    assert sum(global_.tokens_per_frame) == FRAMES * 10 and global_.tokens_per_frame[1] > 10
    best = set(scores.flatten().argsort(descending=True)[: FRAMES * 10].tolist())
    assert {f * GRID * GRID + p for f, idx in enumerate(global_.kept_indices) for p in idx.tolist()} == best
    expected = torch.cat([frame[idx] for frame, idx in zip(features, global_.kept_indices)])
    assert torch.equal(global_.features, expected)


# ----- on the tiny Video-LLaVA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,settings", [("random", {"seed": 1}), ("pool", {}), ("fastervlm", {"global_budget": True}),
                                             ("vispruner", {}), ("vispruner", {"global_budget": True})])
def test_vision_methods_on_video_llava(tiny_pipeline, method, settings):
    from fastervlm.models.base import GenerationSettings

    pixels = torch.randn(tiny_pipeline.num_frames, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    frames, patches, keep = tiny_pipeline.num_frames, tiny_pipeline.num_patches, 5
    generation = GenerationSettings(max_new_tokens=2)
    full = tiny_pipeline.answer("What is moving?", pixels=pixels, method="none", generation=generation)
    answer = tiny_pipeline.answer("What is moving?", pixels=pixels, method=method, keep=keep, generation=generation, **settings)
    assert answer.visual_tokens == frames * keep
    assert answer.prompt_tokens == full.prompt_tokens - frames * (patches - keep)
    if method == "pool":
        assert answer.kept_indices is None
    else:
        assert sum(len(i) for i in answer.kept_indices) == frames * keep
    assert answer.method["method"] == method
