"""HoliTom (arXiv 2505.21334), its outer-LLM part: merge what repeats over time into its first occurrence, then
merge or keep within each frame, under one budget for the whole video.

On the projected candidates x (T, N, C) (the reference works after the projector), with B = T x L tokens in all:
1. Temporal segmentation. s[t, n] = cos(x[t, n], x[t + 1, n]); position n is static over frames a..b when
   s[t, n] > tau for every t in a..b-1. The frames are cut into consecutive windows of at most `max_window` frames
   that maximise the tokens saved, the sum over windows of (positions static over the window) x (frames - 1), by
   dynamic programming (a longer window only where it saves strictly more; single frames otherwise).
2. Temporal merging. In a window of several frames, the tokens of each static position are averaged into one
   token in the window's first frame; the other positions of each frame are its dynamic tokens.
3. Budget. Every part (a window's static tokens; a frame's dynamic tokens) gets its share of B,
   size x min(1, B / M) with M the tokens left after step 2, rounded as the reference does (up for a frame's
   dynamic tokens, to nearest for static ones); where that does not add up to min(B, M), the parts whose rounding
   moved them furthest give (or take) one token each, so that the total is exactly min(B, M).
4. Spatial merging. A window's static tokens are merged by density peaks into their quota q. A frame's dynamic
   tokens: round(q x (1 - D)) with the highest attention (the `score`) are kept, the other q - that many are
   density-peak merges of the rest (D = 0, the default: attention alone; the rest are dropped).
   Density peaks (DPC-KNN) of M tokens into c: d = |x_i - x_j| / sqrt(C); density rho_i = exp(-mean of d^2 over
   its k = min(K, c) nearest tokens, itself included); delta_i = d to the nearest denser token (the largest d of
   all for the densest); the c highest rho x delta are the peaks; every other token joins its nearest peak; a
   peak with members becomes beta x peak + (1 - beta) x mean of its members.
A merged token takes the place of its peak (a static one: in the window's first frame). Order: window after
window, a window's static tokens first, then each frame's kept tokens (raster order), then its merges (peak order).
Reference: cokeshao/HoliTom, holitom/llava_arch.py (`prepare_inputs_labels_for_multimodal`, `select_static_windows`,
`get_static_dynamic_features`, `holitom`, `cluster_dpc_knn`, `merge_tokens_by_clustering`); docs/methods.md says
where this departs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from fastervlm.methods.base import (
    PROJECTED,
    RECEIVED_SCORES,
    Selection,
    VisualTokens,
    check_fraction,
    check_whole_number,
    select_candidates,
    setting,
)
from fastervlm.methods.ranking import SCORES, ImportanceScored
from fastervlm.methods.registry import register
from fastervlm.selection import descending_order


# ----- 1. temporal segmentation -------------------------------------------------------------------------------------
def adjacent_similar(tokens: torch.Tensor, tau: float) -> torch.Tensor:
    """(T, N, C) -> (T-1, N) bool: each position's token is more than tau cosine-similar to the next frame's (a
    zero token: similarity 0). Dot products over norms: no normalised copy of the video's tokens."""
    norms = torch.linalg.vector_norm(tokens, dim=-1).clamp(min=1e-12)
    return torch.linalg.vecdot(tokens[:-1], tokens[1:]) / (norms[:-1] * norms[1:]) > tau


def window_gains(similar: torch.Tensor) -> list[list[int]]:
    """(T-1, N) -> gain[a][b] (a < b): the tokens a window of frames a..b saves, (positions static over it) x
    (b - a); 0 for b <= a."""
    frames = similar.shape[0] + 1
    gain = torch.zeros(frames, frames, dtype=torch.long)
    for start in range(frames - 1):
        static = similar[start:].long().cumprod(dim=0).sum(dim=1).cpu()  # positions static over start..start+1+i
        gain[start, start + 1 :] = static * torch.arange(1, frames - start)
    return gain.tolist()


def segment(gain: list[list[int]], max_window: int) -> list[tuple[int, int]]:
    """The windows (first, last frame) that maximise the total gain, at most `max_window` frames each."""
    frames = len(gain)
    best = [0] * (frames + 1)  # best[i]: the best total over frames 0..i-1
    first = [0] * frames  # first[b]: the first frame of the window that ends at b
    for last in range(frames):
        best[last + 1], first[last] = best[last], last  # the frame alone
        for size in range(2, min(last + 1, max_window) + 1):
            start = last + 1 - size
            if best[start] + gain[start][last] > best[last + 1]:  # strictly more: ties keep the shorter window
                best[last + 1], first[last] = best[start] + gain[start][last], start
    windows, last = [], frames - 1
    while last >= 0:
        windows.append((first[last], last))
        last = first[last] - 1
    return windows[::-1]


# ----- 3. the budget -------------------------------------------------------------------------------------------------
def part_quotas(sizes: list[int], static: list[bool], budget: int) -> list[int]:
    """Tokens each part keeps: its share of min(budget, total), rounded the reference's way (to nearest for static
    parts, up for dynamic ones), then moved by one for the parts rounded furthest until the quotas add up to it."""
    total = sum(sizes)
    target = min(budget, total)
    shares = [Fraction(size * target, total) if total else Fraction(0) for size in sizes]
    quotas = [round(share) if near else math.ceil(share) for share, near in zip(shares, static)]
    excess = sum(quotas) - target
    step = 1 if excess > 0 else -1  # too many: take from the largest excess; too few: give to the largest deficit
    order = sorted(range(len(sizes)), key=lambda p: -step * (quotas[p] - shares[p]))  # stable: earlier part first
    for part in order[: abs(excess)]:
        quotas[part] -= step
    return quotas


# ----- 4. spatial merging ----------------------------------------------------------------------------------------------
def density_peaks(tokens: torch.Tensor, peaks: int, neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) fp32 tokens -> (peaks,) ascending indices of the DPC-KNN density peaks, and the (M, M) distances.
    Of two equal densities the lower index counts as denser; of two equal peak scores the lower index is taken."""
    count = tokens.shape[0]
    distance = torch.cdist(tokens[None], tokens[None])[0] / tokens.shape[-1] ** 0.5
    nearest = distance.topk(min(neighbours, peaks), dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    index = torch.arange(count, device=tokens.device)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None]))  # [i, j]: j is denser than i
    to_denser = distance.masked_fill(~denser, distance.max()).min(dim=-1).values
    chosen = descending_order(to_denser * density)[:peaks]
    return torch.sort(chosen).values, distance


def merge_into_peaks(tokens: torch.Tensor, peaks: torch.Tensor, distance: torch.Tensor,
                     beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) tokens -> (c, C) merged tokens and (M,) the peak (0 .. c-1) each token joined: its nearest peak (the
    first on ties); a peak with members is beta x peak + (1 - beta) x their mean, one without stays itself."""
    owner = distance[:, peaks].argmin(dim=1)
    owner[peaks] = torch.arange(len(peaks), device=tokens.device)
    member = torch.ones(len(tokens), dtype=torch.bool, device=tokens.device)
    member[peaks] = False
    sums = torch.zeros(len(peaks), tokens.shape[1], dtype=tokens.dtype, device=tokens.device)
    sums.index_add_(0, owner[member], tokens[member])
    counts = torch.bincount(owner[member], minlength=len(peaks))[:, None]
    blended = beta * tokens[peaks] + (1 - beta) * (sums / counts.clamp(min=1))
    return torch.where(counts > 0, blended, tokens[peaks]), owner


def spatial_merge(tokens: torch.Tensor, scores: torch.Tensor | None, quota: int, dominant: int, neighbours: int,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One part's (M, C) tokens -> its `quota` tokens (q, C), the part token each takes the place of (q,), and the
    output token (0 .. q-1) each part token went into, or -1 if dropped (M,). The `dominant` highest `scores` are
    kept as themselves (raster order); the rest are merged into quota - dominant density peaks."""
    count, device = tokens.shape[0], tokens.device
    owner = torch.full((count,), -1, dtype=torch.long, device=device)
    kept = torch.sort(descending_order(scores)[:dominant]).values if dominant else owner[:0]
    owner[kept] = torch.arange(dominant, device=device)
    rest = owner < 0
    contextual = quota - dominant
    if contextual == 0:
        return tokens[kept], kept, owner
    remaining = rest.nonzero().flatten()
    peaks, distance = density_peaks(tokens[remaining], contextual, neighbours)
    merged, joined = merge_into_peaks(tokens[remaining], peaks, distance, beta)
    owner[remaining] = joined + dominant
    return torch.cat([tokens[kept], merged]), torch.cat([kept, remaining[peaks]]), owner


# ----- 2. temporal merging, and the method -----------------------------------------------------------------------------
@dataclass
class Part:
    """Tokens that share one quota: a window's static tokens (merged over time) or a frame's dynamic tokens."""

    tokens: torch.Tensor
    """(M, C) fp32."""
    candidates: torch.Tensor
    """(M, W) the flat candidate indices each token stands for, its first frame first (W = 1 for dynamic tokens)."""
    scores: torch.Tensor | None
    """(M,) what ranks dynamic tokens (None for static ones, or when nothing is ranked)."""
    static: bool


def temporal_parts(tokens: torch.Tensor, scores: torch.Tensor | None, similar: torch.Tensor,
                   windows: list[tuple[int, int]]) -> list[Part]:
    """(T, N, C) fp32 tokens, (T, N) scores and the windows -> the parts, window after window: its static tokens
    (each averaged over the window's frames), then each frame's dynamic tokens."""
    frames, patches, _ = tokens.shape
    flat = torch.arange(frames * patches, device=tokens.device).view(frames, patches)
    parts = []
    for first, last in windows:
        static = similar[first:last].all(dim=0) if last > first else flat[0] < 0  # a lone frame: none static
        if last > first:
            parts.append(Part(tokens[first : last + 1, static].mean(dim=0), flat[first : last + 1, static].T, None,
                              True))
        for frame in range(first, last + 1):
            parts.append(Part(tokens[frame, ~static], flat[frame, ~static][:, None],
                              None if scores is None else scores[frame, ~static], False))
    return parts


@register
@dataclass
class HoliTom(ImportanceScored):
    name = "holitom"
    inputs = frozenset({PROJECTED, RECEIVED_SCORES})
    budget = "video"
    selects_patches = False
    summary = ("merges tokens that repeat over time into their first frame (global temporal segmentation), then "
               "keeps each frame's most attended tokens and merges static ones by density peaks; frames x L in all")
    reference = "HoliTom, arXiv 2505.21334 (github.com/cokeshao/HoliTom, holitom/llava_arch.py)"

    score: str = setting("received", "what ranks a frame's dynamic tokens: received (the mean attention each token "
                                     "receives from all queries, the reference's) or cls (the [CLS] query's attention)",
                         recorded_at_default=False)
    tau: float = setting(0.8, "T: a position's tokens in two consecutive frames are redundant above this cosine "
                              "similarity (the reference's default; its scripts use 0.65 when keeping a tenth of the tokens)")
    max_window: int = setting(1024, "the longest temporal window, in frames (the reference's MAX_WINDOW_SIZE; 1: "
                                    "no temporal merging)")
    contextual_ratio: float = setting(0.0, "D: share of a frame's quota given to density-peak merges of its dynamic "
                                           "tokens; the rest are its most attended ones (0: attention alone)")
    neighbours: int = setting(7, "K: nearest neighbours of the density-peak density (at most the number of peaks)")
    beta: float = setting(0.6, "weight of a peak in its merged token: beta x peak + (1 - beta) x mean of its "
                               "members (the reference's BETA)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.tau, "holitom's {tau}", "{tau}=0.8")
        check_whole_number(self.max_window, "holitom's {max_window}", "{max_window}=1024", minimum=1)
        check_fraction(self.contextual_ratio, "holitom's {contextual_ratio}", "{contextual_ratio}=0")
        check_whole_number(self.neighbours, "holitom's {neighbours}", "{neighbours}=7", minimum=1)
        check_fraction(self.beta, "holitom's {beta}", "{beta}=0.6")

    def required_inputs(self) -> frozenset[str]:
        """The projected candidates, and the score while some of a frame's quota is chosen by attention (D < 1)."""
        return frozenset({PROJECTED, *([SCORES[self.score]] if self.contextual_ratio < 1 else [])})

    def select(self, tokens: VisualTokens) -> Selection:
        features = tokens.require(PROJECTED, self.name)
        frames, patches, _ = features.shape
        keep = self.per_frame_budget(patches)
        if keep == patches:
            return select_candidates(features, [torch.arange(patches, device=features.device)] * frames,
                                     projected=True)
        candidates = features.float()
        similar = adjacent_similar(candidates, self.tau)
        windows = segment(window_gains(similar), self.max_window)
        scores = self.importance(tokens).float() if self.contextual_ratio < 1 else None
        parts = temporal_parts(candidates, scores, similar, windows)
        quotas = part_quotas([len(part.tokens) for part in parts], [part.static for part in parts], frames * keep)
        return self._merge(features, parts, quotas)

    def _merge(self, features: torch.Tensor, parts: list[Part], quotas: list[int]) -> Selection:
        """Each part merged into its quota; the tokens in order, with their sources and the candidates they took."""
        frames, patches, _ = features.shape
        owners = torch.full((frames * patches,), -1, dtype=torch.long, device=features.device)  # per candidate
        pieces, sources, offset = [], [], 0
        for part, quota in zip(parts, quotas):
            dominant = 0 if part.static else round(quota * (1 - self.contextual_ratio))
            merged, source, owner = spatial_merge(part.tokens, part.scores, quota, dominant, self.neighbours,
                                                  self.beta)
            pieces.append(merged)
            sources.append(part.candidates[source, 0])
            taken = owner >= 0
            owners[part.candidates[taken].flatten()] = (owner[taken, None] + offset).expand(
                -1, part.candidates.shape[1]).flatten()
            offset += quota
        is_merged = torch.bincount(owners[owners >= 0], minlength=offset) > 1
        groups = torch.where((owners >= 0) & is_merged[owners.clamp(min=0)], owners, -1) if offset else owners
        return Selection(torch.cat(pieces).to(features.dtype), torch.cat(sources), frames, patches,
                         merged=is_merged, groups=groups if bool(is_merged.any()) else None, projected=True)
