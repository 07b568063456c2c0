"""HoliTom against a plain re-statement of its reference code (cokeshao/HoliTom, holitom/llava_arch.py) on clips
whose tokens repeat over time: the same windows, the same tokens kept, merged and dropped, the same merged
features (1e-5, fp32); the budget it spreads; the merges it reports; what it refuses."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from fastervlm.errors import BudgetError, UnsupportedModelError
from fastervlm.methods import VisualTokens, create_pruner
from fastervlm.methods.holitom import part_quotas, segment, window_gains

WIDTH = 16


# ----- the reference, restated -------------------------------------------------------------------------------------
def restated_windows(x: torch.Tensor, tau: float, max_window: int) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
    """`select_static_windows` on the adjacent-frame similarities: (similarities, windows, tokens saved)."""
    frames = x.shape[0]
    unit = F.normalize(x, p=2, dim=-1)
    similarity = F.cosine_similarity(unit[:-1], unit[1:], dim=-1)  # (T-1, N)
    static_over = torch.ones(frames, frames, x.shape[1])
    for start in range(frames - 1):
        run = torch.cumprod(similarity[start:] > tau, dim=0)
        static_over[start, start + 1 : start + 1 + len(run)] = run.float()
    lengths = (torch.arange(frames)[None] - torch.arange(frames)[:, None]).clamp(min=0)
    saved = static_over.sum(dim=-1) * lengths
    dp, prev = torch.zeros(frames), [0] * frames
    for i in range(frames):
        best, best_j = (dp[i - 1] if i > 0 else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0) + saved[j + 1, i]
            if value > best:
                best, best_j = value, j + 1
        dp[i], prev[i] = best, best_j
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return similarity, windows[::-1], int(dp[-1])


def restated_quotas(sizes: list[int], static: list[bool], left: int, budget: int) -> list[int]:
    """n x retain ratio, rounded as the reference does (`round` for static tokens, `ceil` for a frame's dynamic
    tokens), in exact arithmetic; then (our departure, docs/methods.md) one token at a time off the part rounded
    furthest up, or onto the one rounded furthest down, the earlier part on ties, until the total is exact."""
    ratio = min(Fraction(budget, left), Fraction(1))
    quotas = [round(n * ratio) if s else math.ceil(n * ratio) for n, s in zip(sizes, static)]
    target = min(budget, left)
    while sum(quotas) != target:
        sign = 1 if sum(quotas) > target else -1
        drift = [sign * (q - n * ratio) for q, n in zip(quotas, sizes)]
        quotas[drift.index(max(drift))] -= sign
    return quotas


def restated_dpc(x: torch.Tensor, cluster_num: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`cluster_dpc_knn` on (B, M, C). Its 1e-6 random density noise, there to break ties (with k = 2 mutual
    nearest neighbours always tie; with k = 1 every density is 1), is restated as our documented rule: of two equal
    densities the lower index is the denser; of two equal scores the lower index is taken."""
    dist = torch.cdist(x.float(), x.float()) / (x.shape[-1] ** 0.5)
    nearest, _ = torch.topk(dist, k, dim=-1, largest=False)
    density = (-(nearest**2).mean(dim=-1)).exp()
    index = torch.arange(x.shape[1])
    mask = ((density[:, None, :] > density[:, :, None])
            | ((density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None]))).float()
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta, _ = (dist * mask + dist_max * (1 - mask)).min(dim=-1)
    return torch.sort(delta * density, dim=-1, descending=True, stable=True).indices[:, :cluster_num], dist


def restated_clusters(feat: torch.Tensor, count: int, k: int, beta: float) -> list[tuple[torch.Tensor, int, list[int]]]:
    """`merge_tokens_by_density`/`merge_tokens_by_clustering` on one (M, C) set: (token, center, members)."""
    centers, dist = restated_dpc(feat[None], count, min(k, count))
    centers = torch.sort(centers, dim=-1).values[0].tolist()
    others = [i for i in range(len(feat)) if i not in centers]
    nearest = dist[0][others][:, centers].argmin(dim=-1).tolist() if others else []
    out = []
    for number, center in enumerate(centers):
        members = [i for i, c in zip(others, nearest) if c == number]
        token = (beta * feat[center] + (1 - beta) * feat[members].mean(dim=0)) if members else feat[center]
        out.append((token, center, members))
    return out


def restated_holitom(x, attn, keep, tau=0.8, max_window=1024, d=0.0, beta=0.6, k=7):
    """The reference's outer-LLM HoliTom of one video, x (T, N, C) projected tokens, attn (T, N) the attention
    they receive, budget T x keep: [(token, source flat index, sorted candidates it holds)] in prompt order."""
    frames, patches, _ = x.shape
    similarity, windows, saved = restated_windows(x, tau, max_window)
    masks = [(similarity[a:b] > tau).all(dim=0) if b > a else torch.zeros(patches, dtype=torch.bool)
             for a, b in windows]
    sizes, static = [], []
    for (a, b), mask in zip(windows, masks):
        if b > a:
            sizes, static = sizes + [int(mask.sum())], static + [True]
        sizes, static = sizes + [int((~mask).sum())] * (b - a + 1), static + [False] * (b - a + 1)
    quotas = iter(restated_quotas(sizes, static, frames * patches - saved, frames * keep))
    out = []
    for (a, b), mask in zip(windows, masks):
        if b > a:
            positions, quota = mask.nonzero().flatten().tolist(), next(quotas)
            feat = x[a : b + 1, mask].mean(dim=0)
            for token, center, members in (restated_clusters(feat, quota, k, beta) if quota else []):
                held = sorted(f * patches + positions[i] for f in range(a, b + 1) for i in [center, *members])
                out.append((token, a * patches + positions[center], held))
        positions = (~mask).nonzero().flatten().tolist()
        for frame in range(a, b + 1):
            quota = next(quotas)
            feat, scores = x[frame, ~mask], attn[frame, ~mask]
            dominant = round(quota * (1 - d))
            kept = sorted(scores.topk(dominant).indices.tolist()) if dominant else []
            out += [(feat[i], frame * patches + positions[i], [frame * patches + positions[i]]) for i in kept]
            rest = [i for i in range(len(feat)) if i not in kept]
            if quota - dominant:
                for token, center, members in restated_clusters(feat[rest], quota - dominant, k, beta):
                    held = sorted(frame * patches + positions[rest[i]] for i in [center, *members])
                    out.append((token, frame * patches + positions[rest[center]], held))
    return out


# ----- clips ---------------------------------------------------------------------------------------------------------
def repeating_clip(frames: int, patches: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N, C) tokens where each frame repeats, with a little noise (cos ~0.995), a random share of the previous
    frame's tokens, and (T, N) random attention."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, patches, WIDTH, generator=generator)
    for frame in range(1, frames):
        share = torch.rand(1, generator=generator)
        repeat = torch.rand(patches, generator=generator) < share
        x[frame, repeat] = x[frame - 1, repeat] + 0.1 * torch.randn(int(repeat.sum()), WIDTH, generator=generator)
    return x, torch.rand(frames, patches, generator=generator)


def ours(x: torch.Tensor, attn: torch.Tensor, keep: int, **settings):
    return create_pruner("holitom", keep=keep, **settings).select(VisualTokens(x, projected=x, received_scores=attn))


def held_candidates(selection) -> list[list[int]]:
    """Per token, the candidates it holds: its merge group, or its source alone."""
    groups = selection.groups
    return [(groups == k).nonzero().flatten().tolist() if selection.merged[k] else [int(selection.source[k])]
            for k in range(len(selection.source))]


# ----- against the reference -----------------------------------------------------------------------------------------
SIZES = [(5, 12, 3), (7, 20, 6), (6, 49, 10), (3, 30, 1), (9, 16, 5), (8, 22, 15)]


@pytest.mark.parametrize("frames,patches,keep", SIZES)
@pytest.mark.parametrize("d", [0.0, 0.5, 1.0])
def test_equals_the_restated_reference(frames, patches, keep, d):
    x, attn = repeating_clip(frames, patches, seed=frames * 100 + patches)
    expected = restated_holitom(x, attn, keep, d=d)
    selection = ours(x, attn, keep, contextual_ratio=d)
    assert selection.source.tolist() == [source for _, source, _ in expected]
    assert held_candidates(selection) == [held for _, _, held in expected]
    assert torch.allclose(selection.features, torch.stack([token for token, _, _ in expected]), atol=1e-5)
    assert len(selection.source) == min(frames * keep, frames * patches - restated_windows(x, 0.8, 1024)[2])


@pytest.mark.parametrize("settings", [dict(tau=0.65), dict(max_window=2), dict(neighbours=2, beta=0.3),
                                      dict(tau=0.99, contextual_ratio=0.3)])
def test_equals_the_restated_reference_with_other_settings(settings):
    x, attn = repeating_clip(7, 18, seed=3)
    names = {"tau": "tau", "max_window": "max_window", "neighbours": "k", "beta": "beta", "contextual_ratio": "d"}
    expected = restated_holitom(x, attn, 4, **{names[key]: value for key, value in settings.items()})
    selection = ours(x, attn, 4, **settings)
    assert selection.source.tolist() == [source for _, source, _ in expected]
    assert held_candidates(selection) == [held for _, _, held in expected]
    assert torch.allclose(selection.features, torch.stack([token for token, _, _ in expected]), atol=1e-5)


def test_the_windows_are_the_references_and_really_merge():
    lengths = set()
    for seed in range(12):
        x, _ = repeating_clip(9, 16, seed)
        similarity, windows, _ = restated_windows(x, 0.8, 1024)
        assert segment(window_gains(similarity > 0.8), 1024) == windows
        lengths |= {b - a + 1 for a, b in windows}
    assert 1 in lengths and max(lengths) >= 3  # the clips give single frames and long windows


def test_segmentation_prefers_strictly_more_saved_tokens_and_caps_the_window():
    similar = torch.tensor([[True, True], [True, True], [False, False]])  # 4 frames, 2 positions
    gain = window_gains(similar)
    assert (gain[0][1], gain[0][2], gain[1][2], gain[0][3], gain[2][3]) == (2, 4, 2, 0, 0)
    assert segment(gain, 1024) == [(0, 2), (3, 3)]  # 4 saved; (0, 1) + (1, 2) cannot overlap
    assert segment(gain, 2) == [(0, 1), (2, 2), (3, 3)]  # (1, 2) would save as much as (0, 1): not strictly more
    tie = window_gains(torch.tensor([[True, False], [False, True], [False, False]]))
    assert segment(tie, 1024) == [(0, 1), (2, 2), (3, 3)]
    assert segment(window_gains(torch.zeros(3, 4, dtype=torch.bool)), 1024) == [(0, 0), (1, 1), (2, 2), (3, 3)]


# ----- the budget ----------------------------------------------------------------------------------------------------
def test_quotas_round_as_the_reference_and_add_up_to_the_budget():
    assert part_quotas([16, 16, 16], [False] * 3, 15) == [5, 5, 5]
    assert part_quotas([3, 9, 9, 9], [True, False, False, False], 10) == [1, 3, 3, 3]  # exact shares
    assert part_quotas([4, 9, 9, 9], [True, False, False, False], 10) == [1, 3, 3, 3]  # round 1.29, ceil 2.90
    assert part_quotas([10, 10, 10], [False] * 3, 10) == [3, 3, 4]  # ceil(3.33) x 3 = 12: the earlier two give one
    assert part_quotas([7, 1, 1], [True, False, False], 4) == [3, 0, 1]  # round(3.11) + 2 x ceil(0.44) = 5
    assert part_quotas([5, 5], [True, True], 5) == [3, 2]  # round(2.5) = 2 twice (to even): the earlier takes one
    assert part_quotas([4, 4], [False, False], 100) == [4, 4]  # the budget exceeds what is left: all of it
    assert part_quotas([196] * 8, [False] * 8, 8 * 53) == [53] * 8  # in floats 196 x (53/196) is 53.00000000000001


@pytest.mark.parametrize("seed", range(6))
def test_the_total_is_the_budget_and_frames_get_what_changes(seed):
    x, attn = repeating_clip(8, 25, seed)
    for keep in (1, 4, 9, 24):
        selection = ours(x, attn, keep)
        assert sum(selection.tokens_per_frame) == min(8 * keep, 8 * 25 - restated_windows(x, 0.8, 1024)[2])
        assert selection.features.shape == (sum(selection.tokens_per_frame), WIDTH)


def test_repeated_frames_get_fewer_tokens_than_changing_ones_within_the_budget():
    generator = torch.Generator().manual_seed(7)
    still = torch.randn(1, 36, WIDTH, generator=generator)
    x = torch.cat([still.expand(4, -1, -1), torch.randn(4, 36, WIDTH, generator=generator)])  # 4 frames repeat
    attn = torch.rand(8, 36, generator=generator)
    for keep in (3, 8, 20):
        selection = ours(x, attn, keep)
        per_frame = selection.tokens_per_frame
        assert sum(per_frame) == 8 * keep
        assert sum(per_frame[:4]) < sum(per_frame[4:]) and per_frame[1:4] == [0, 0, 0]
        assert max(per_frame[:4]) <= min(per_frame[4:]) + 1
        # each token of frame 0 is one position averaged over the 4 repeats, or a merge of several such
        groups = selection.groups.view(8, 36)
        for token in range(per_frame[0]):
            frames_held = (groups == token).nonzero()[:, 0].unique().tolist()
            assert frames_held == [0, 1, 2, 3] and int(selection.source[token]) < 36


def test_keep_everything_is_every_token_unchanged_and_keep_none_is_nothing():
    x, attn = repeating_clip(4, 9, 0)
    everything = ours(x, attn, 9)
    assert torch.equal(everything.features, x.reshape(-1, WIDTH)) and everything.groups is None
    assert everything.projected and everything.tokens_per_frame == [9] * 4
    nothing = ours(x, attn, 0)
    assert nothing.features.shape == (0, WIDTH) and nothing.tokens_per_frame == [0] * 4


def test_half_precision_merges_in_fp32_and_returns_the_models_dtype():
    x, attn = repeating_clip(6, 16, 2)
    full, half = ours(x, attn, 4), ours(x.half(), attn, 4)
    assert half.features.dtype == torch.float16 and torch.equal(half.source, full.source)
    assert torch.allclose(half.features.float(), full.features, atol=2e-2)


# ----- settings and inputs ------------------------------------------------------------------------------------------
def test_inputs_follow_the_settings():
    assert create_pruner("holitom").required_inputs() == {"projected", "received_scores"}
    assert create_pruner("holitom", score="cls").required_inputs() == {"projected", "cls_scores"}
    assert create_pruner("holitom", contextual_ratio=1.0).required_inputs() == {"projected"}
    x, _ = repeating_clip(4, 9, 1)
    assert create_pruner("holitom", keep=3, contextual_ratio=1.0).select(VisualTokens(x, projected=x)).tokens_per_frame
    with pytest.raises(UnsupportedModelError, match="received-attention"):
        create_pruner("holitom", keep=3).select(VisualTokens(x, projected=x))
    with pytest.raises(UnsupportedModelError, match="projected"):
        create_pruner("holitom", keep=3).select(VisualTokens(x, received_scores=torch.rand(4, 9)))


@pytest.mark.parametrize("setting,value", [("tau", 1.5), ("max_window", 0), ("contextual_ratio", -0.1),
                                           ("neighbours", 0), ("beta", "half"), ("score", "keys")])
def test_bad_settings_are_refused_by_name(setting, value):
    with pytest.raises(BudgetError, match=setting):
        create_pruner("holitom", keep=3, **{setting: value})


def test_an_image_keeps_its_most_attended_tokens():
    x, attn = repeating_clip(1, 10, 4)
    selection = ours(x, attn, 3)
    assert selection.source.tolist() == sorted(attn[0].topk(3).indices.tolist()) and selection.groups is None
