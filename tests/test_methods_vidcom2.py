"""VidCom2 against a plain re-statement of the reference's `vidcom2_compression` (token_compressor/vidcom2/vidcom2.py)
on random projected tokens: the same similarity scores, per-frame budgets that are the reference's rounded to sum
to exactly T x L, and in every frame the same kept tokens (rows of the projected tokens, unchanged)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastervlm.errors import BudgetError
from fastervlm.methods import VisualTokens, create_pruner
from fastervlm.methods.vidcom2 import apportion

WIDTH, LLM_WIDTH = 6, 10


def restated_scores(flat: torch.Tensor, per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's feature analysis on (T x N, C) tokens -> (video similarity, frame similarity), each (T, N)."""
    variances = flat.var(dim=0, unbiased=False)
    channels = torch.topk(variances, k=int(flat.shape[-1] * 0.5), largest=False).indices
    frames = flat[:, channels].view(-1, per_frame, len(channels))
    frames = frames / frames.norm(dim=-1, keepdim=True)
    alphas = [2**k for k in range(-3, 2)]

    def kernel(centre: torch.Tensor) -> torch.Tensor:
        squared = ((frames - centre) ** 2).sum(dim=-1)
        return sum(torch.exp(-squared / (2 * a)) for a in alphas)

    return kernel(frames.mean(dim=(0, 1), keepdim=True)), kernel(frames.mean(dim=1, keepdim=True))


def restated_budgets(video: torch.Tensor, base_scale: float, per_frame: int) -> list[int]:
    """The reference's `compute_scales` and `select_outlier_indices` budgets: round(scale x N), at least 1."""
    scores = -video.mean(dim=-1)
    probs = F.softmax((scores - scores.max()) / 0.01, dim=0)
    scales = (base_scale * (1 + probs - probs.mean())).clamp(max=1.0)
    return (scales * per_frame).round().long().clamp(min=1).tolist()


def restated_kept(scores: torch.Tensor, budgets: list[int]) -> list[list[int]]:
    """Per frame, the `k` tokens of lowest video + frame similarity (the reference's topk(largest=False)), sorted."""
    return [sorted(torch.topk(row, k=k, largest=False).indices.tolist()) for row, k in zip(scores, budgets)]


def _tokens(frames: int, patches: int, seed: int) -> VisualTokens:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(patches, LLM_WIDTH, generator=generator)  # the frames repeat one another, with noise ...
    projected = base + 0.3 * torch.randn(frames, patches, LLM_WIDTH, generator=generator)
    projected[frames // 2] = torch.randn(patches, LLM_WIDTH, generator=generator)  # ... but for one frame
    return VisualTokens(torch.randn(frames, patches, WIDTH, generator=generator), projected=projected)


CASES = [(frames, patches, keep) for frames, patches in [(5, 30), (7, 36), (3, 49), (1, 20)]
         for keep in (1, 4, 7, 11)]


@pytest.mark.parametrize("frames, patches, keep", CASES)
def test_equals_the_restated_reference(frames: int, patches: int, keep: int) -> None:
    tokens = _tokens(frames, patches, seed=frames * 100 + keep)
    selection = create_pruner("vidcom2", keep=keep).select(tokens)
    video, frame = restated_scores(tokens.projected.reshape(-1, LLM_WIDTH), patches)
    theirs = restated_budgets(video, keep / patches, patches)
    ours = selection.tokens_per_frame
    assert sum(ours) == frames * keep  # the budget holds exactly, where the reference's rounding may miss it
    assert all(abs(a - b) <= 1 for a, b in zip(ours, theirs))  # no clamp at these budgets: rounding only
    if sum(theirs) == frames * keep:
        assert ours == theirs
    kept = restated_kept(video + frame, ours)
    assert [index.tolist() for index in selection.kept_indices] == kept
    flat = [t * patches + i for t, frame_kept in enumerate(kept) for i in frame_kept]
    assert selection.projected and torch.equal(selection.features, tokens.projected.reshape(-1, LLM_WIDTH)[flat])
    assert selection.merged is None and selection.groups is None


def test_the_restated_budgets_agree_in_most_cases() -> None:
    """The exact-budget assertion above is not vacuous: most cases round to T x L and then match exactly."""
    agree = 0
    for frames, patches, keep in CASES:
        tokens = _tokens(frames, patches, seed=frames * 100 + keep)
        video, _ = restated_scores(tokens.projected.reshape(-1, LLM_WIDTH), patches)
        agree += sum(restated_budgets(video, keep / patches, patches)) == frames * keep
    assert agree >= len(CASES) // 2


def test_a_unique_frame_gets_more_tokens_and_capped_frames_pass_their_excess_on() -> None:
    tokens = _tokens(6, 25, seed=3)
    moderate = create_pruner("vidcom2", keep=5).select(tokens).tokens_per_frame
    assert moderate[3] == max(moderate) > 5 > min(moderate)  # frame 3 = frames // 2, the unlike one
    high = create_pruner("vidcom2", keep=20).select(tokens).tokens_per_frame
    assert high[3] == 25 and sum(high) == 6 * 20 and max(high) <= 25  # the reference would stop at 25 and lose 5+


def test_apportion_keeps_bounds_and_total() -> None:
    # 7.5 is capped at 4; the other 8 are shared again, 8/3 each; the two remaining tokens go to the earlier frames
    assert apportion(torch.tensor([5.0, 1.0, 1.0, 1.0]), total=12, low=1, high=4).tolist() == [4, 3, 3, 2]
    assert apportion(torch.tensor([0.01, 1.0, 1.0]), total=3, low=1, high=3).tolist() == [1, 1, 1]
    assert apportion(torch.tensor([1.0, 2.0, 1.0]), total=8, low=0, high=8).tolist() == [2, 4, 2]
    with pytest.raises(BudgetError, match="cannot share"):
        apportion(torch.tensor([1.0, 1.0]), total=9, low=0, high=4)


def test_keep_all_is_the_identity_and_keep_none_keeps_nothing() -> None:
    tokens = _tokens(3, 16, seed=1)
    everything = create_pruner("vidcom2", keep=16).select(tokens)
    assert torch.equal(everything.features, tokens.features.reshape(-1, WIDTH)) and not everything.projected
    nothing = create_pruner("vidcom2", reduction=1.0).select(tokens)
    assert nothing.features.shape[0] == 0 and nothing.tokens_per_frame == [0, 0, 0]


def test_settings_are_checked() -> None:
    assert create_pruner("vidcom2", reduction=0.75).settings() == {
        "method": "vidcom2", "keep": None, "reduction": 0.75, "temperature": 0.01}
    for bad in (0, -1.0, "x", True):
        with pytest.raises(BudgetError, match="temperature"):
            create_pruner("vidcom2", temperature=bad)
