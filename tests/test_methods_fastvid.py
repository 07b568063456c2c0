"""FastVID against a plain re-statement of the reference's FastVID block (fastvid_llavaonevision/.../modeling_qwen2.py,
`Qwen2Model.forward`) on projected tokens of clips whose frames come in runs of near-repeats: the same segments,
the same salient tokens, the same density peaks, and the same merged tokens (1e-5, fp32), for several settings,
budgets that do not divide evenly and frame counts that are not powers of two."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastervlm.errors import BudgetError
from fastervlm.methods import VisualTokens, create_pruner

WIDTH, LLM_WIDTH = 5, 12


def restated_segments(global_features: torch.Tensor, c: int, tau: float) -> list[int]:
    """DySeg as the reference writes it (its topk of c - 1 needs c <= T; we take at most T - 1 cuts)."""
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    similarity = (unit[:-1] * unit[1:]).sum(dim=1)
    cut_topk = torch.topk(similarity, min(c - 1, len(similarity)), largest=False).indices
    cut_cos = torch.nonzero(similarity < tau, as_tuple=False).squeeze(1)
    cuts = torch.unique(torch.cat([cut_topk, cut_cos])).sort().values
    padded = F.pad(cuts, (1, 1), value=-1)
    padded[-1] = len(global_features) - 1
    return padded.diff().tolist()


def restated_context_numbers(sizes: list[int], context: int, p: int) -> list[int]:
    """The anchor tokens per frame: the reference's mask (every p-th frame counted back from a segment's end), each
    segment's context x S shared as the authors' LLaVA-Video code shares it (chunks, remainder first, reversed)."""
    numbers: list[int] = []
    for size in sizes:
        holders = (size + p - 1) // p
        chunk, remainder = divmod(context * size, holders)
        chunks = [chunk + (1 if i < remainder else 0) for i in range(holders)]
        forward, taken = [], 0
        for i in range(size):
            if i % p == 0:
                forward.append(chunks[taken])
                taken += 1
            else:
                forward.append(0)
        numbers.extend(reversed(forward))
    return numbers


def restated_density_score(tokens: torch.Tensor) -> torch.Tensor:
    """(T, M, D) the non-salient tokens -> (T, M) the reference's dist_0 x density (without its 1e-6 noise)."""
    dist_matrix = torch.cdist(tokens.float(), tokens.float()) / (tokens.shape[-1] ** 0.5)
    dist_nearest, _ = torch.topk(dist_matrix, k=4, dim=-1, largest=False)
    density = (-(dist_nearest**2).mean(dim=-1)).exp()
    mask = (density[:, None, :] > density[:, :, None]).float()
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist_0, _ = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)
    return dist_0 * density


def restated_merge(targets: torch.Tensor, pool: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's DTM for one anchor frame: one-hot assignment by cosine argmax, weighted average."""
    similarity = (pool / pool.norm(dim=-1, keepdim=True)) @ (targets / targets.norm(dim=-1, keepdim=True)).T
    assign = torch.zeros(len(pool), len(targets))
    assign.scatter_(1, similarity.argmax(dim=1).unsqueeze(-1), 1)
    avg_weights = (1 / (assign.sum(dim=0).unsqueeze(-1) + 1)).clamp(min=beta)
    counts = assign.sum(dim=0).clamp(min=1).unsqueeze(-1)
    aggregated = assign.T @ pool / counts
    return avg_weights * targets + (1 - avg_weights) * aggregated, similarity.argmax(dim=1)


def restated_fastvid(hidden, attention, keep, c=8, tau=0.9, d=0.4, p=4, beta=0.6):
    """hidden (T, n, D) projected tokens, attention (T, n) -> ({flat source: (token, merged)}, {member: [anchor
    source per anchor frame that merged it, with that frame]}), as the reference keeps and merges them."""
    frames, n, _ = hidden.shape
    sizes = restated_segments(hidden.mean(dim=1), c, tau)
    salient_num = keep - int(keep * d)
    context = keep - salient_num
    numbers = restated_context_numbers(sizes, context, p)
    salient = torch.topk(attention, salient_num, dim=1).indices
    kept = {t * n + i: (hidden[t, i], False) for t in range(frames) for i in salient[t].tolist()}
    filtered = [sorted(set(range(n)) - set(salient[t].tolist())) for t in range(frames)]
    tokens = torch.stack([hidden[t, filtered[t]] for t in range(frames)])
    score = restated_density_score(tokens)
    segment_of = [s for s, size in enumerate(sizes) for _ in range(size)]
    memberships: dict[int, list[tuple[int, int]]] = {}
    for t in range(frames):
        if numbers[t] == 0:
            continue
        pool_frames = [t] if numbers[t] == context else [f for f in range(frames) if segment_of[f] == segment_of[t]]
        sampled = torch.topk(score[t], k=numbers[t]).indices
        pool = torch.cat([tokens[f] for f in pool_frames])
        merged, joins = restated_merge(tokens[t, sampled], pool, beta)
        sources = [t * n + filtered[t][i] for i in sampled.tolist()]
        for source, token in zip(sources, merged):
            kept[source] = (token, True)
        members = [f * n + i for f in pool_frames for i in filtered[f]]
        for member, join in zip(members, joins.tolist()):
            memberships.setdefault(member, []).append((t, sources[join]))
    return kept, memberships


def clip(runs: list[int], patches: int, seed: int) -> VisualTokens:
    """Frames in runs of near-repeats (a run's frames = one set of tokens + small noise), with random scores."""
    generator = torch.Generator().manual_seed(seed)
    frames = [base + 0.05 * torch.randn(length, patches, LLM_WIDTH, generator=generator)
              for length in runs for base in [torch.randn(patches, LLM_WIDTH, generator=generator)]]
    projected = torch.cat(frames)
    total = len(projected)
    return VisualTokens(torch.randn(total, patches, WIDTH, generator=generator), projected=projected,
                        cls_scores=torch.rand(total, patches, generator=generator))


SETTINGS = [{}, {"min_segments": 2}, {"min_segments": 3, "anchor_every": 2}, {"min_segments": 1, "anchor_every": 3},
            {"min_segments": 2, "anchor_every": 1}, {"min_segments": 4, "merge_share": 0.6, "anchor_weight": 0.3}]
CLIPS = [([5, 1, 3, 2], 30), ([9, 4], 21), ([1, 1, 1], 16), ([7], 25)]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("runs, patches", CLIPS)
@pytest.mark.parametrize("keep", [1, 4, 7])
def test_equals_the_restated_reference(settings: dict, runs: list[int], patches: int, keep: int) -> None:
    tokens = clip(runs, patches, seed=sum(runs) * 10 + keep)
    pruner = create_pruner("fastvid", keep=keep, **settings)
    selection = pruner.select(tokens)
    kept, memberships = restated_fastvid(tokens.projected, tokens.cls_scores, keep, c=pruner.min_segments,
                                         tau=pruner.cut_below, d=pruner.merge_share, p=pruner.anchor_every,
                                         beta=pruner.anchor_weight)
    assert selection.source.tolist() == sorted(kept)
    expected = torch.stack([kept[s][0] for s in sorted(kept)]) if kept else selection.features
    torch.testing.assert_close(selection.features, expected, atol=1e-5, rtol=1e-5)
    merged = [kept[s][1] for s in sorted(kept)]
    assert (selection.merged.tolist() if selection.merged is not None else [False] * len(kept)) == merged
    assert sum(selection.tokens_per_frame) == len(kept) == tokens.frames * keep  # T x L exactly
    _check_groups(selection, memberships, patches)


def _check_groups(selection, memberships: dict[int, list[tuple[int, int]]], patches: int) -> None:
    """Each candidate's group is the token of the anchor it joined in the nearest anchor frame at or after its own
    (else before it); -1 for a salient or dropped one."""
    if selection.groups is None:
        assert not memberships
        return
    token_of = {source: token for token, source in enumerate(selection.source.tolist())}
    expected = [-1] * len(selection.groups)
    for member, joined in memberships.items():
        frame = member // patches
        _, anchor = min(joined, key=lambda fa: (fa[0] - frame) if fa[0] >= frame else 10**6 + frame - fa[0])
        expected[member] = token_of[anchor]
    assert selection.groups.tolist() == expected


def test_a_segment_merges_across_its_frames_into_anchor_frames() -> None:
    """One 8-frame run of near-repeats and 4 changing frames, c = 2: the run is one segment whose merged tokens sit
    in every 4th frame counted back from its end and absorb candidates of all 8 frames."""
    tokens = clip([8, 1, 1, 1, 1], 20, seed=4)
    selection = create_pruner("fastvid", keep=5, min_segments=2).select(tokens)
    counts = selection.tokens_per_frame
    # L = 5: 3 salient + int(5 x 0.4) = 2 merged per frame; the run's 8 x 2 merged tokens go to frames 3 and 7
    assert counts[:8] == [3, 3, 3, 11, 3, 3, 3, 11] and counts[8:] == [5, 5, 5, 5] and sum(counts) == 12 * 5
    groups = selection.groups.view(12, 20)
    merged_frames = {int(selection.source[g]) // 20 for g in groups[:8].flatten().tolist() if g >= 0}
    assert merged_frames == {3, 7}  # the run's tokens went into its two anchor frames
    assert all((groups[t] >= 0).sum() == 20 - 3 for t in range(12))  # every non-salient candidate was merged


def test_anchor_tokens_never_exceed_a_frames_non_salient_tokens() -> None:
    tokens = clip([6], 10, seed=5)
    selection = create_pruner("fastvid", keep=9, min_segments=1, merge_share=0.9).select(tokens)
    # 1 salient + 8 merged per frame would put 48 merged tokens in frames 1 and 5; each has only 9 non-salient
    assert selection.tokens_per_frame == [1, 10, 1, 1, 1, 10] and sum(selection.tokens_per_frame) <= 6 * 9


def test_keep_all_is_the_identity_and_keep_none_keeps_nothing() -> None:
    tokens = clip([2, 3], 16, seed=1)
    everything = create_pruner("fastvid", keep=16).select(tokens)
    assert torch.equal(everything.features, tokens.features.reshape(-1, WIDTH)) and not everything.projected
    nothing = create_pruner("fastvid", reduction=1.0).select(tokens)
    assert nothing.features.shape[0] == 0 and nothing.tokens_per_frame == [0] * 5 and nothing.groups is None


def test_it_reads_the_projected_tokens_and_the_chosen_score() -> None:
    assert create_pruner("fastvid").required_inputs() == {"projected", "cls_scores"}
    assert create_pruner("fastvid", score="received").required_inputs() == {"projected", "received_scores"}


@pytest.mark.parametrize("setting, value", [("min_segments", 0), ("anchor_every", 1.5), ("merge_share", 1.2),
                                            ("anchor_weight", -0.1), ("cut_below", 2), ("cut_below", "high")])
def test_settings_are_checked(setting: str, value: object) -> None:
    with pytest.raises(BudgetError, match=setting):
        create_pruner("fastvid", **{setting: value})
    assert math.isclose(create_pruner("fastvid").cut_below, 0.9)
