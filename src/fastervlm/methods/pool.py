"""pool: average the patch grid of each frame down to exactly L tokens (a spatial, score-free baseline).

The g x g grid is cut into L rectangles that tile it: r = round(sqrt(L)) bands of rows, each band cut into
L / r column blocks (the first L mod r bands get one block more), band and block edges at floor(i * g / parts).
Each kept token is the mean of its rectangle's patches, in raster order of the rectangles. L = g^2 gives every
patch unchanged; a perfect square L = s^2 is plain s x s average pooling when s divides g. The tokens are
merged, not selected, so `kept_indices` is None (conventions.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.methods.base import EncodedVideo, VisionPruner, VisualSelection
from fastervlm.methods.registry import register


def _edges(size: int, parts: int) -> list[int]:
    return [i * size // parts for i in range(parts + 1)]


def pooling_matrix(grid: int, cells: int) -> torch.Tensor:
    """(cells, grid * grid) averaging weights: row c holds 1/area over rectangle c's patches (raster order)."""
    weights = torch.zeros(cells, grid * grid)
    if cells == 0:
        return weights
    bands = min(grid, max(1, round(math.sqrt(cells))))
    blocks = [cells // bands + (1 if band < cells % bands else 0) for band in range(bands)]
    plane = torch.arange(grid * grid).view(grid, grid)
    cell = 0
    row_edges = _edges(grid, bands)
    for band, count in enumerate(blocks):
        col_edges = _edges(grid, count)
        for block in range(count):
            patches = plane[row_edges[band] : row_edges[band + 1], col_edges[block] : col_edges[block + 1]].flatten()
            weights[cell, patches] = 1.0 / len(patches)
            cell += 1
    return weights


@register
@dataclass
class Pool(VisionPruner):
    name = "pool"
    selects_patches = False
    summary = "average pooling of each frame's patch grid into exactly L rectangles (merges patches)"

    def select(self, encoded: EncodedVideo) -> VisualSelection:
        features = encoded.features
        frames, patches, width = features.shape
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise UnsupportedModelError(f"pool needs a square patch grid; this model has {patches} patches per frame.")
        keep = self.per_frame_budget(patches)
        weights = pooling_matrix(grid, keep).to(device=features.device, dtype=features.dtype)
        pooled = weights @ features  # (T, L, C)
        return VisualSelection(pooled.reshape(-1, width), None, [keep] * frames)
