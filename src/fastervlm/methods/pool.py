"""pool: average the patch grid of each frame down to exactly L tokens (a spatial, score-free baseline).

The rows x cols grid is cut into L rectangles that tile it: r = round(sqrt(L x rows / cols)) bands of rows (at least
ceil(L / cols)), each band cut into L / r column blocks (the first L mod r bands get one block more), band and block
edges at floor(i * side / parts). Each rectangle's token takes the place (coordinates, positions) of its top-left
patch.
Each kept token is the mean of its rectangle's patches, in raster order of the rectangles. L = g^2 gives every
patch unchanged; on a g x g grid a perfect square L = s^2 is plain s x s average pooling when s divides g. The
tokens are merged, not selected, so `kept_indices` is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastervlm.errors import UnsupportedModelError
from fastervlm.methods.base import VisualTokens, VisionPruner, Selection
from fastervlm.methods.registry import register


def _edges(size: int, parts: int) -> list[int]:
    return [i * size // parts for i in range(parts + 1)]


def pooling_matrix(grid: int | tuple[int, int], cells: int) -> torch.Tensor:
    """(cells, rows * cols) averaging weights: row c holds 1/area over rectangle c's patches (raster order); `grid`
    is the side of a square grid or (rows, cols)."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    weights = torch.zeros(cells, rows * cols)
    if cells == 0:
        return weights
    # bands as for a square grid, stretched by the aspect ratio, and enough that no band holds more blocks than columns
    bands = max(math.ceil(cells / cols), min(rows, cells, max(1, round(math.sqrt(cells * rows / cols)))))
    blocks = [cells // bands + (1 if band < cells % bands else 0) for band in range(bands)]
    plane = torch.arange(rows * cols).view(rows, cols)
    cell = 0
    row_edges = _edges(rows, bands)
    for band, count in enumerate(blocks):
        col_edges = _edges(cols, count)
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

    def select(self, tokens: VisualTokens) -> Selection:
        features = tokens.features
        frames, patches, width = features.shape
        try:
            grid = tokens.rows_cols
        except UnsupportedModelError as err:
            raise UnsupportedModelError(f"pool needs the frame's patch grid: {err}") from err
        keep = self.per_frame_budget(patches)
        weights = pooling_matrix(grid, keep).to(device=features.device, dtype=features.dtype)
        pooled = weights @ features  # (T, L, C)
        # each rectangle takes the place of its first patch (its top-left one); every patch is merged into its own
        member = (weights > 0).float()
        offsets = torch.arange(frames)[:, None]
        source = (member.argmax(dim=1)[None] + patches * offsets).flatten().to(features.device)
        groups = (member.argmax(dim=0)[None] + keep * offsets).flatten().to(features.device) if keep else None
        merged = torch.ones(frames * keep, dtype=torch.bool, device=features.device)
        return Selection(pooled.reshape(-1, width), source, frames, patches, merged=merged, groups=groups,
                         keeps_patches=False)
