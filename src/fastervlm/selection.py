"""The method's core: scores -> top-k -> sort -> gather, as pure tensor functions.

FasterVLM keeps, in every frame, the L patches the [CLS] query attends to most, in their original raster
order. Ties are broken towards the lower patch index (a stable sort), so the choice is the same on every
device and dtype, where `torch.topk`'s tie order is implementation-defined.
"""

from __future__ import annotations

import math

import torch

from fastervlm.errors import BudgetError


def keep_from_reduction(num_patches: int, reduction: float) -> int:
    """Per-frame budget L = round(N * (1 - r)), rounding halves up (0.9 -> 26, 0.95 -> 13 for N = 256)."""
    if not 0.0 <= reduction <= 1.0:
        raise BudgetError(f"{{reduction}} must be between 0 and 1 (got {reduction}); e.g. 0.9 keeps 10% of the patches.")
    exact = round(num_patches * (1.0 - reduction), 6)  # strip float noise: 256 * 0.1 = 25.599999999999998
    return int(math.floor(exact + 0.5))


def resolve_keep(num_patches: int, keep: int | None = None, reduction: float | None = None) -> int:
    """The per-frame budget from either `keep` or `reduction`; neither means keep all N patches."""
    if keep is not None and reduction is not None:
        raise BudgetError("{keep} and {reduction} are two ways to set one budget: give only one of them.")
    if reduction is not None:
        return keep_from_reduction(num_patches, reduction)
    if keep is None:
        return num_patches
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= num_patches:
        raise BudgetError(
            f"{{keep}} must be a whole number of patches per frame between 0 and {num_patches} (got {keep!r})."
        )
    return keep


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort the last axis from highest to lowest score, lower index first on ties."""
    return torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices


def topk_per_frame(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(..., T, N) scores -> (..., T, keep) patch indices: each frame's top `keep`, in ascending order."""
    if not 0 <= keep <= scores.shape[-1]:
        raise BudgetError(f"cannot keep {keep} of {scores.shape[-1]} patches per frame.")
    top = descending_order(scores)[..., :keep]
    return torch.sort(top, dim=-1).values


def topk_global(scores: torch.Tensor, total: int) -> list[torch.Tensor]:
    """(T, N) scores -> the `total` best patches over all frames, as one ascending index tensor per frame."""
    frames, patches = scores.shape
    if not 0 <= total <= frames * patches:
        raise BudgetError(f"cannot keep {total} of {frames * patches} patches in total.")
    return indices_per_frame(descending_order(scores.reshape(-1))[:total], frames, patches)


def indices_per_frame(flat_indices: torch.Tensor, frames: int, num_patches: int) -> list[torch.Tensor]:
    """Distinct indices over a video's frames x N tokens (any order) -> one ascending index tensor per frame."""
    kept = torch.zeros(frames * num_patches, dtype=torch.bool, device=flat_indices.device)
    kept[flat_indices] = True
    return [row.nonzero().flatten() for row in kept.view(frames, num_patches)]


def gather_tokens(features: torch.Tensor, indices: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """(T, N, C) features and per-frame indices -> (K, C) kept tokens, frame after frame."""
    if isinstance(indices, torch.Tensor):
        return take_rows(features, indices).reshape(-1, features.shape[-1])
    # index_select, not frame[idx]: advanced indexing is several times slower on the CPU (nonzero()'s indices most)
    return torch.cat([frame.index_select(0, idx) for frame, idx in zip(features, indices)], dim=0)


def take_rows(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(P, M, C) tokens and (P, K) indices -> (P, K, C): each pool's rows at its indices."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def split_by_frame(flat_indices: torch.Tensor, frames: int, num_patches: int) -> list[list[int]]:
    """Ascending indices over a video's frames*N tokens -> one sorted list of patch indices per frame."""
    per_frame: list[list[int]] = [[] for _ in range(frames)]
    for index in flat_indices.tolist():
        per_frame[index // num_patches].append(index % num_patches)
    return per_frame
