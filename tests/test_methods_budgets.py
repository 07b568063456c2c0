"""What every vision-stage method shares: keep-all is the identity, L = 0 keeps nothing, one `global_budget` setting
spends frames x L over the video and reports the counts it reached, and one `score` setting switches the
[CLS]-ranking methods to the received-attention score."""

from __future__ import annotations

import pytest
import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.methods import VisualTokens, create_pruner, has_setting, list_methods
from fastervlm.methods.base import CLS_SCORES, RECEIVED_SCORES

FRAMES, HEADS, GRID, WIDTH, HEAD_DIM, LLM_WIDTH = 3, 2, 6, 5, 4, 7
PATCHES = GRID * GRID
BUDGETED = [name for name, cls in list_methods().items() if cls.stage == "vision" and cls.budget == "per_frame"]
GLOBAL = [name for name in BUDGETED if has_setting(name, "global_budget")]
SCORED = [name for name in BUDGETED if has_setting(name, "score")]
CONFIGURATIONS = [(name, {}) for name in BUDGETED] + [(name, {"global_budget": True}) for name in GLOBAL]


def _everything(seed: int = 0) -> VisualTokens:
    """Every input a method can ask for, at random."""
    generator = torch.Generator().manual_seed(seed)
    return VisualTokens(
        torch.randn(FRAMES, PATCHES, WIDTH, generator=generator),
        cls_scores=torch.rand(FRAMES, PATCHES, generator=generator),
        received_scores=torch.rand(FRAMES, PATCHES, generator=generator),
        patch_keys=torch.randn(FRAMES, HEADS, PATCHES, HEAD_DIM, generator=generator),
        projected=torch.randn(FRAMES, PATCHES, LLM_WIDTH, generator=generator),
    )


def test_the_registry_has_the_new_methods_and_their_roles():
    assert {"vispruner", "visionzip", "divprune"} <= set(BUDGETED)
    assert set(GLOBAL) == {"fastervlm", "random", "vispruner", "divprune"}
    assert set(SCORED) == {"fastervlm", "vispruner", "visionzip"}
    assert not list_methods()["visionzip"].selects_patches and list_methods()["vispruner"].selects_patches


@pytest.mark.parametrize("method,settings", CONFIGURATIONS)
def test_keeping_every_patch_returns_them_all_unchanged_in_raster_order(method, settings):
    encoded = _everything()
    selection = create_pruner(method, keep=PATCHES, **settings).select(encoded)
    source = encoded.projected if selection.projected else encoded.features
    assert torch.equal(selection.features, source.reshape(-1, source.shape[-1]))
    assert selection.tokens_per_frame == [PATCHES] * FRAMES
    if selection.kept_indices is not None:
        assert all(torch.equal(kept, torch.arange(PATCHES)) for kept in selection.kept_indices)
        assert selection.merged_per_frame == [0] * FRAMES


@pytest.mark.parametrize("method,settings", CONFIGURATIONS)
def test_keeping_none_returns_no_token(method, settings):
    selection = create_pruner(method, keep=0, **settings).select(_everything())
    assert selection.features.shape[0] == 0 and selection.tokens_per_frame == [0] * FRAMES
    if selection.kept_indices is not None:
        assert [len(kept) for kept in selection.kept_indices] == [0] * FRAMES


@pytest.mark.parametrize("method", GLOBAL)
def test_a_global_budget_reports_the_counts_it_reached(method):
    encoded = _everything(1)
    encoded.cls_scores[1] += 1.0  # frame 1 is the most attended, so score methods give it more than L
    selection = create_pruner(method, keep=7, global_budget=True).select(encoded)
    assert sum(selection.tokens_per_frame) == FRAMES * 7
    assert selection.tokens_per_frame == [len(kept) for kept in selection.kept_indices]
    assert len(set(selection.tokens_per_frame)) > 1  # on these inputs, frames keep different counts
    source = encoded.projected if selection.projected else encoded.features
    assert torch.equal(selection.features, torch.cat([frame[kept] for frame, kept in zip(source, selection.kept_indices)]))


def test_random_global_budget_ranks_the_same_draw_over_the_whole_video():
    encoded = _everything(2)
    draw = torch.rand(FRAMES, PATCHES, generator=torch.Generator().manual_seed(5)).flatten()
    best = sorted(range(draw.numel()), key=lambda i: (-draw[i].item(), i))[: FRAMES * 4]
    kept = create_pruner("random", keep=4, seed=5, global_budget=True).select(encoded).kept_indices
    assert sorted(f * PATCHES + int(p) for f, frame in enumerate(kept) for p in frame) == sorted(best)
    per_frame = create_pruner("random", keep=4, seed=5).select(encoded).kept_indices
    for frame, chosen in enumerate(per_frame):
        row = draw.view(FRAMES, PATCHES)[frame]
        assert chosen.tolist() == sorted(sorted(range(PATCHES), key=lambda i: (-row[i].item(), i))[:4])


def test_whole_video_puts_the_frames_one_after_another():
    encoded = _everything(3)
    whole = encoded.whole_video()
    for frame, patch in [(0, 0), (1, 5), (2, PATCHES - 1)]:
        flat = frame * PATCHES + patch
        assert torch.equal(whole.features[0, flat], encoded.features[frame, patch])
        assert torch.equal(whole.patch_keys[0, :, flat], encoded.patch_keys[frame, :, patch])
        assert whole.cls_scores[0, flat] == encoded.cls_scores[frame, patch]
        assert torch.equal(whole.projected[0, flat], encoded.projected[frame, patch])


@pytest.mark.parametrize("method", SCORED)
def test_score_received_ranks_by_the_received_scores_instead_of_cls(method):
    encoded = _everything(4)
    by_cls = create_pruner(method, keep=9).select(encoded)
    pruner = create_pruner(method, keep=9, score="received")
    assert RECEIVED_SCORES in pruner.required_inputs() and CLS_SCORES not in pruner.required_inputs()
    assert not pruner.needs_cls_scores and create_pruner(method, keep=9).needs_cls_scores
    swapped = VisualTokens(encoded.features, received_scores=encoded.cls_scores, patch_keys=encoded.patch_keys,
                           projected=encoded.projected)
    assert torch.equal(pruner.select(swapped).features, by_cls.features)
    with pytest.raises(UnsupportedModelError, match="received-attention scores"):
        pruner.select(VisualTokens(encoded.features, cls_scores=encoded.cls_scores, patch_keys=encoded.patch_keys))


def test_the_score_setting_is_recorded_only_when_it_is_not_the_default():
    assert "score" not in create_pruner("vispruner", keep=3).settings()
    assert create_pruner("vispruner", keep=3, score="received").settings()["score"] == "received"
    assert create_pruner("vispruner", keep=3).settings()["important_ratio"] == 0.5
