"""DivPrune (arXiv 2503.02175): keep the most diverse subset of the projected visual tokens, greedily (max-min
cosine distance). No attention score, so it works on every vision encoder.

With budget L per pool (a frame, or the whole video with `global_budget`, which is what the reference does on a
video: it prunes the visual tokens of the prompt as one sequence), d(i, j) = 1 - cos(x_i, x_j) over the projected
tokens x (the LLM's input embeddings):
1. the first token is the one whose nearest other token is farthest: argmax_j of the second smallest d(., j);
2. each next one maximises its distance to the closest token chosen so far: argmax_j min_s d(s, j);
ties to the lower index, a token never chosen twice. Kept tokens in raster order.
Reference: ModelTC/LightCompress, llmc/compression/token_reduction/divprune.py (`divprune`); docs/methods.md says
where this departs from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastervlm.methods.base import PROJECTED, VisualTokens
from fastervlm.methods.ranking import PatchSelector
from fastervlm.methods.registry import register


def max_min_diverse(tokens: torch.Tensor, keep: int) -> torch.Tensor:
    """(P, M, C) tokens -> (P, keep) ascending indices of each pool's greedy max-min cosine-diverse subset."""
    pools = torch.arange(tokens.shape[0], device=tokens.device)
    unit = F.normalize(tokens.float(), dim=-1)
    distance = 1.0 - unit @ unit.transpose(1, 2)  # (P, M, M): d(row, column)
    score = distance.topk(2, dim=1, largest=False).values[:, 1]  # per column: the nearest other token
    taken = torch.zeros(score.shape, dtype=torch.bool, device=tokens.device)
    nearest_chosen = torch.full_like(score, float("inf"))
    chosen = []
    for _ in range(keep):
        pick = score.masked_fill(taken, float("-inf")).argmax(dim=1)
        chosen.append(pick)
        taken[pools, pick] = True
        nearest_chosen = torch.minimum(nearest_chosen, distance[pools, pick])
        score = nearest_chosen  # from the second pick on: the distance to the closest chosen token
    return torch.sort(torch.stack(chosen, dim=1), dim=1).values


@register
@dataclass
class DivPrune(PatchSelector):
    name = "divprune"
    inputs = frozenset({PROJECTED})
    summary = "greedy max-min cosine diversity over the projected visual tokens, L per frame (no attention needed)"
    reference = "DivPrune, arXiv 2503.02175 (github.com/ModelTC/LightCompress, token_reduction/divprune.py)"

    def choose(self, pools: VisualTokens, keep: int) -> torch.Tensor:
        return max_min_diverse(pools.require(PROJECTED, self.name), keep)
