"""VidCom2 (arXiv 2505.14454, "Video Compression Commander"): frames that differ from the rest of the video keep
more tokens, and within each frame the tokens that differ from both the video and the frame are kept.

With budget L per frame (frames x L = T x L in all), on the projected tokens (the LLM's input embeddings):
1. Channels: the half of the C channels whose variance over all T x N tokens is lowest; tokens are L2-normalised
   over those channels.
2. Similarity of each token to a centre c: sum over a in (1/8, 1/4, 1/2, 1, 2) of exp(-||x - c||^2 / (2a)); to
   the video's mean token (video similarity) and to its frame's mean token (frame similarity).
3. Frame uniqueness u_t = minus the frame's mean video similarity; p = softmax((u - max u) / temperature); frame t's
   share is 1 + p_t - mean(p), its budget L x T x share / sum(shares), rounded so that the budgets sum to T x L,
   each between 1 (when L >= 1) and N (`frame_budgets`).
4. Each frame keeps its k_t tokens with the lowest video + frame similarity, in raster order.
Reference: xuyang-liu16/VidCom2, token_compressor/vidcom2/vidcom2.py (`vidcom2_compression`); docs/methods.md says
where this departs from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastervlm.errors import BudgetError
from fastervlm.methods.base import (PROJECTED, Selection, VisionPruner, VisualTokens, check_number, keep_all_tokens,
                                    select_candidates, setting)
from fastervlm.methods.registry import register
from fastervlm.selection import descending_order

BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
"""The Gaussian kernels' a (the reference's 2^k, k = -3 .. 1)."""
CHANNEL_SHARE = 0.5
"""Share of the channels, those of lowest variance, that the similarities are computed on (the reference's)."""


def low_variance_channels(tokens: torch.Tensor) -> torch.Tensor:
    """(M, C) tokens -> (M, int(C x CHANNEL_SHARE)): the channels whose variance over the M tokens is lowest."""
    variance = tokens.var(dim=0, unbiased=False)
    chosen = torch.sort(variance, stable=True).indices[: int(tokens.shape[-1] * CHANNEL_SHARE)]
    return tokens.index_select(1, chosen)


def gaussian_similarity(tokens: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(..., C) tokens and a broadcastable centre -> (...) the multi-bandwidth Gaussian similarity to it."""
    squared = (tokens - centre).square().sum(dim=-1)
    return sum(torch.exp(-squared / (2 * a)) for a in BANDWIDTHS)


def similarities(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N, C) tokens -> (T, N) similarity of each token to the video's mean token and to its frame's."""
    frames, patches, width = projected.shape
    tokens = low_variance_channels(projected.float().reshape(-1, width)).view(frames, patches, -1)
    tokens = F.normalize(tokens, dim=-1)
    video = gaussian_similarity(tokens, tokens.mean(dim=(0, 1), keepdim=True))
    frame = gaussian_similarity(tokens, tokens.mean(dim=1, keepdim=True))
    return video, frame


def apportion(shares: torch.Tensor, total: int, low: int, high: int,
              priority: torch.Tensor | None = None) -> torch.Tensor:
    """(T,) positive shares -> (T,) whole counts in [low, high] that sum to `total`, proportional to the shares.

    A count that would fall outside the bounds is pinned to the bound and the rest of the total is shared again
    among the others; the fractions are rounded by largest remainder, equal fractions to the higher `priority`
    (then the earlier frame)."""
    if not low * len(shares) <= total <= high * len(shares):
        raise BudgetError(f"cannot share {total} tokens over {len(shares)} frames of {low} to {high} each.")
    shares = shares.double()
    pinned = torch.zeros(len(shares), dtype=torch.bool)
    exact = shares * total / shares.sum()
    for _ in range(len(shares)):
        out = ~pinned & ((exact < low) | (exact > high))
        if not bool(out.any()):
            break
        pinned |= out
        exact = exact.clamp(low, high)
        if bool(pinned.all()):
            break
        rest = total - exact[pinned].sum()
        exact = torch.where(pinned, exact, shares * rest / shares[~pinned].sum())
    counts = exact.floor()
    remainder = int(round(total - counts.sum().item()))
    by_priority = descending_order(priority) if priority is not None else torch.arange(len(shares))
    by_fraction = by_priority[descending_order((exact - counts)[by_priority])]
    counts[by_fraction[:remainder]] += 1
    return counts.long()


def frame_budgets(video_similarity: torch.Tensor, keep: int, temperature: float) -> torch.Tensor:
    """(T, N) video similarities -> (T,) tokens per frame: more for frames less like the video, T x keep in all."""
    frames, patches = video_similarity.shape
    uniqueness = -video_similarity.mean(dim=1)
    weight = torch.softmax((uniqueness - uniqueness.max()) / temperature, dim=0)
    shares = 1 + weight - weight.mean()  # equal shares (a softmax that underflows) go to the more unique frame
    return apportion(shares.cpu(), frames * keep, min(1, keep), patches, priority=uniqueness.cpu())


@register
@dataclass
class VidCom2(VisionPruner):
    name = "vidcom2"
    inputs = frozenset({PROJECTED})
    budget = "video"
    summary = ("frames unlike the rest of the video get more of the T x L tokens; each keeps its tokens least like "
               "the video and the frame")
    reference = "VidCom2, arXiv 2505.14454 (github.com/xuyang-liu16/VidCom2, token_compressor/vidcom2/vidcom2.py)"

    temperature: float = setting(0.01, "softmax temperature of the frame uniqueness that shares the budget between "
                                       "frames (lower: the most unique frames take more)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.temperature, "vidcom2's {temperature}", "{temperature}=0.01", 0, low_included=False)

    def select(self, tokens: VisualTokens) -> Selection:
        projected = tokens.require(PROJECTED, self.name)
        frames, patches, _ = projected.shape
        keep = self.per_frame_budget(patches)
        if keep == patches:
            return keep_all_tokens(tokens.features)
        video, frame = similarities(projected)
        budgets = frame_budgets(video, keep, self.temperature).tolist()
        order = descending_order(-(video + frame))  # the least similar first
        indices = [torch.sort(order[t, :count]).values for t, count in enumerate(budgets)]
        return select_candidates(projected, indices, projected=True)
