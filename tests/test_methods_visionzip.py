"""VisionZip against a plain re-statement of its published algorithm, fed from a full eager attention map, while
ours runs from the layer's q/k (the [CLS] row and the patch keys): the same dominant patches, the same merged
contextual tokens (1e-5, fp32)."""

from __future__ import annotations

import math

import pytest
import torch

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.methods import VisualTokens, create_pruner
from fastervlm.scoring import cls_patch_scores

FRAMES, HEADS, HEAD_DIM, GRID, WIDTH = 3, 4, 8, 8, 10
PATCHES = GRID * GRID


def restated_visionzip(features, cls_attention, keys, budget, ratio=54 / 64):
    """One frame, written out: features (N, C); cls_attention (H, N) the [CLS] row per head; keys (H, N, D).
    Returns (dominant patch indices, the frame's tokens, the contextual token of each patch or -1)."""
    dominant = math.floor(budget * ratio + 0.5)
    contextual = budget - dominant
    importance = cls_attention.sum(dim=0).tolist()  # the reference sums the heads
    order = sorted(range(len(importance)), key=lambda i: (-importance[i], i))
    kept, rest = sorted(order[:dominant]), sorted(order[dominant:])
    tokens = [features[i] for i in kept]
    groups = [-1] * len(importance)
    if contextual:
        metric = keys.mean(dim=0)
        unit = metric / metric.norm(dim=-1, keepdim=True)
        step = max(1, len(rest) // contextual)
        targets = [rest[p] for p in range(0, len(rest), step)][:contextual]
        members: dict[int, list[int]] = {t: [] for t in targets}
        for i in rest:
            if i not in members:
                similarity = [float(unit[i] @ unit[t]) for t in targets]
                members[targets[similarity.index(max(similarity))]].append(i)  # the first target on ties
        for number, target in enumerate(targets):
            joined = members[target]
            mean = torch.stack([features[j] for j in joined]).mean(dim=0) if joined else torch.zeros_like(features[0])
            tokens.append(features[target] + mean)
            for patch in [target, *joined]:
                groups[patch] = number
    return kept, torch.stack(tokens) if tokens else features[:0], groups


def _layer(seed: int):
    """q and k of a CLIP-like feature layer ([CLS] first) and its output hidden states, per frame."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(FRAMES, HEADS, 1 + PATCHES, HEAD_DIM, generator=generator)
    k = torch.randn(FRAMES, HEADS, 1 + PATCHES, HEAD_DIM, generator=generator)
    hidden = torch.randn(FRAMES, 1 + PATCHES, WIDTH, generator=generator)
    return q, k, hidden


def _ours(q, k, hidden) -> VisualTokens:
    """What the engine hands the method: the [CLS] row from q/k (no map), the patch keys, the patch features."""
    return VisualTokens(hidden[:, 1:], cls_scores=cls_patch_scores(q[:, :, 0], k, HEAD_DIM**-0.5),
                        patch_keys=k[:, :, 1:])


def _eager_cls_rows(q, k) -> torch.Tensor:
    """(T, H, N) the [CLS] row of the full softmax(q k^T / sqrt(d)) map, CLS->CLS dropped."""
    return (q @ k.transpose(-1, -2) * HEAD_DIM**-0.5).softmax(dim=-1)[:, :, 0, 1:]


def test_the_scores_from_q_k_are_the_eager_maps_cls_row():
    q, k, _ = _layer(0)
    head_sum = _eager_cls_rows(q, k).sum(dim=1)
    assert torch.allclose(cls_patch_scores(q[:, :, 0], k, HEAD_DIM**-0.5) * HEADS, head_sum, atol=1e-6)


@pytest.mark.parametrize("keep", [1, 2, 5, 7, 13, 26, 40, 63])
@pytest.mark.parametrize("ratio", [54 / 64, 0.5, 0.0])
def test_equals_the_restated_algorithm_fed_from_the_eager_map(keep, ratio):
    q, k, hidden = _layer(keep)
    selection = create_pruner("visionzip", keep=keep, dominant_ratio=ratio).select(_ours(q, k, hidden))
    frames = selection.features.split(selection.tokens_per_frame)
    cls_rows = _eager_cls_rows(q, k)
    for frame in range(FRAMES):
        kept, tokens, groups = restated_visionzip(hidden[frame, 1:], cls_rows[frame], k[frame, :, 1:], keep, ratio)
        assert selection.kept_indices[frame].tolist() == kept
        assert torch.allclose(frames[frame], tokens, atol=1e-5)
        if selection.groups is not None:  # numbered over the video: the frame's contextual tokens follow its kept ones
            offset = frame * keep + len(kept)
            assert selection.groups.view(FRAMES, -1)[frame].tolist() == [-1 if g < 0 else offset + g for g in groups]
        else:
            assert set(groups) == {-1}
    assert selection.tokens_per_frame == [keep] * FRAMES
    assert selection.merged_per_frame == [keep - len(kept)] * FRAMES


def test_the_reference_split_of_64_and_rounding():
    pruner = create_pruner("visionzip", keep=64)
    assert [pruner.split(budget) for budget in (64, 128, 192, 26, 13, 1, 0)] == [
        (54, 10), (108, 20), (162, 30), (22, 4), (11, 2), (1, 0), (0, 0)]


@pytest.mark.parametrize("score", ["cls", "received"])
def test_ranks_by_the_score_it_is_set_to(score):
    q, k, hidden = _layer(5)
    ours = _ours(q, k, hidden)
    swapped = VisualTokens(ours.features, received_scores=ours.cls_scores, patch_keys=ours.patch_keys)
    by_cls = create_pruner("visionzip", keep=10).select(ours)
    pruner = create_pruner("visionzip", keep=10, score=score)
    assert pruner.required_inputs() == {"patch_keys", "cls_scores" if score == "cls" else "received_scores"}
    chosen = pruner.select(ours if score == "cls" else swapped)
    assert torch.equal(chosen.features, by_cls.features)


def test_needs_the_patch_keys_and_has_no_global_budget():
    q, k, hidden = _layer(1)
    with pytest.raises(UnsupportedModelError, match="patch keys"):
        create_pruner("visionzip", keep=10).select(VisualTokens(hidden[:, 1:], cls_scores=torch.rand(FRAMES, PATCHES)))
    with pytest.raises(BudgetError, match="global_budget"):
        create_pruner("visionzip", keep=10, global_budget=True)
    with pytest.raises(BudgetError, match="dominant_ratio"):
        create_pruner("visionzip", keep=10, dominant_ratio=2)
