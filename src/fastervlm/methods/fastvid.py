"""FastVID (arXiv 2503.11187, "Dynamic Density Pruning"): cut the video into segments of similar frames (DySeg),
then in each frame keep its most attended tokens (ATS) and merge the rest of each segment into density peaks of a
few anchor frames (DTM).

With budget L per frame (T x L in all), on the projected tokens (the LLM's input embeddings):
1. DySeg: f_t = the mean projected token of frame t; s_t = cos(f_t, f_t+1). The video is cut after frame t for
   the min_segments - 1 lowest s_t and for every s_t < cut_below.
2. ATS: each frame keeps its L - int(L x merge_share) tokens with the highest attention score.
3. Anchors: a segment of S frames has int(L x merge_share) x S anchor tokens, held by every anchor_every-th frame
   counted back from its last one and shared evenly between them (the first ones counted back take the remainder).
   An anchor frame's anchor tokens are the density peaks of its non-ATS tokens: with d(i, j) = ||x_i - x_j|| /
   sqrt(C), density rho_i = exp(-mean of d^2 to its 4 nearest (itself included)), delta_i = the distance to the
   nearest denser token (the largest distance for the densest); the tokens with the highest rho x delta.
4. DTM: an anchor frame holding more than int(L x merge_share) anchors merges every non-ATS token of its segment,
   one holding exactly that many (a one-frame segment) its own: each token joins its most cosine-similar anchor;
   an anchor becomes w x anchor + (1 - w) x the mean of its members (itself included), w = max(anchor_weight,
   1 / (members + 1)).
Tokens in raster order per frame; a merged token takes the place of its anchor. Reference: LunarShen/FastVID,
fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py (`Qwen2Model.forward`); docs/methods.md
says where this departs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastervlm.methods.base import (CLS_SCORES, PROJECTED, Selection, VisualTokens, check_fraction, check_number,
                                    check_whole_number, keep_all_tokens, setting)
from fastervlm.methods.ranking import ImportanceScored
from fastervlm.methods.registry import register
from fastervlm.selection import descending_order, take_rows

NEIGHBOURS = 4
"""The nearest tokens (the token itself included) whose distances give a token's density (the reference's k)."""


def segment_lengths(frame_features: torch.Tensor, min_segments: int, cut_below: float) -> list[int]:
    """(T, C) one feature per frame -> the lengths of the DySeg segments, in frame order (summing to T)."""
    unit = F.normalize(frame_features.float(), dim=-1)
    similarity = (unit[:-1] * unit[1:]).sum(dim=-1)  # (T - 1,) frame t with frame t + 1
    cut = similarity < cut_below
    cut[descending_order(-similarity)[: min_segments - 1]] = True
    ends = [*(cut.nonzero().flatten() + 1).tolist(), len(frame_features)]
    return [end - start for start, end in zip([0, *ends[:-1]], ends)]


def anchor_counts(lengths: list[int], per_frame: int, every: int) -> list[int]:
    """Segment lengths -> anchor tokens per frame: each segment's per_frame x S, held by every `every`-th frame
    counted back from its last one, shared evenly (the first ones counted back take one more each)."""
    counts: list[int] = []
    for length in lengths:
        holders = math.ceil(length / every)
        share, extra = divmod(per_frame * length, holders)
        back = [0] * length  # the segment's frames, its last one first
        for rank, offset in enumerate(range(0, length, every)):
            back[offset] = share + (rank < extra)
        counts.extend(reversed(back))
    return counts


def density_peaks(tokens: torch.Tensor) -> torch.Tensor:
    """(P, M, C) tokens -> (P, M) rho x delta: high for a token that is dense and far from any denser one."""
    distance = torch.cdist(tokens.float(), tokens.float()) / math.sqrt(tokens.shape[-1])
    nearest = distance.topk(min(NEIGHBOURS, tokens.shape[1]), dim=-1, largest=False).values
    density = torch.exp(-nearest.square().mean(dim=-1))
    denser = density[:, None, :] > density[:, :, None]  # [p, i, j]: token j is denser than token i
    farthest = distance.flatten(1).amax(dim=-1)[:, None, None]
    delta = torch.where(denser, distance, farthest).amin(dim=-1)
    return delta * density


def merge_into_anchors(anchors: torch.Tensor, members: torch.Tensor, anchor_units: torch.Tensor,
                       member_units: torch.Tensor, anchor_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, C) anchors and (M, C) members, with their unit vectors -> (A, C) merged anchors and (M,) the anchor each
    member joined (the most cosine-similar; the first on ties): w x anchor + (1 - w) x the mean of its members,
    w = max(anchor_weight, 1 / (members + 1))."""
    joins = (member_units @ anchor_units.T).argmax(dim=-1)
    one_hot = F.one_hot(joins, len(anchors)).to(members.dtype)  # (M, A)
    counts = one_hot.sum(dim=0).unsqueeze(-1)
    weight = (1 / (counts + 1)).clamp(min=anchor_weight)
    return weight * anchors + (1 - weight) * (one_hot.T @ members) / counts.clamp(min=1), joins


@register
@dataclass
class FastVID(ImportanceScored):
    name = "fastvid"
    inputs = frozenset({CLS_SCORES, PROJECTED})
    budget = "video"
    selects_patches = False
    summary = ("segments of similar frames; per frame the most attended tokens, the rest of each segment merged into "
               "density peaks of a few anchor frames")
    reference = ("FastVID, arXiv 2503.11187 (github.com/LunarShen/FastVID, fastvid_llavaonevision/LLaVA-NeXT/llava/"
                 "model/language_model/modeling_qwen2.py)")

    min_segments: int = setting(8, "DySeg's c: the c - 1 least similar pairs of adjacent frames always start a new "
                                   "segment (with as many frames as c or fewer, every frame is a segment)")
    cut_below: float = setting(0.9, "DySeg's tau: adjacent frames whose mean tokens have a cosine similarity below "
                                    "this always start a new segment")
    merge_share: float = setting(0.4, "STPrune's d: share of L, int(L x d), spent on merged density-peak tokens; the "
                                      "rest are each frame's most attended tokens")
    anchor_every: int = setting(4, "DTM's p: every p-th frame of a segment, counted back from its last, holds the "
                                   "segment's merged tokens")
    anchor_weight: float = setting(0.6, "DTM's beta: the least weight of a density peak itself in its merged token")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_whole_number(self.min_segments, "fastvid's {min_segments}", "{min_segments}=8", minimum=1)
        check_whole_number(self.anchor_every, "fastvid's {anchor_every}", "{anchor_every}=4", minimum=1)
        check_fraction(self.merge_share, "fastvid's {merge_share}", "{merge_share}=0.4")
        check_fraction(self.anchor_weight, "fastvid's {anchor_weight}", "{anchor_weight}=0.6")
        check_number(self.cut_below, "fastvid's {cut_below} (a cosine similarity)", "{cut_below}=0.9", -1, 1)

    def select(self, tokens: VisualTokens) -> Selection:
        projected = tokens.require(PROJECTED, self.name)
        patches = projected.shape[1]
        keep = self.per_frame_budget(patches)
        if keep == patches:
            return keep_all_tokens(tokens.features)
        merged_per_frame = int(keep * self.merge_share)
        order = descending_order(self.importance(tokens))
        salient = order[:, : keep - merged_per_frame]
        rest = torch.sort(order[:, keep - merged_per_frame:], dim=1).values  # (T, R) the non-ATS tokens, raster order
        lengths = segment_lengths(projected.float().mean(dim=1), self.min_segments, self.cut_below)
        counts = anchor_counts(lengths, merged_per_frame, self.anchor_every)
        return self._assemble(projected, salient, rest, lengths, counts, merged_per_frame)

    def _assemble(self, projected: torch.Tensor, salient: torch.Tensor, rest: torch.Tensor, lengths: list[int],
                  counts: list[int], merged_per_frame: int) -> Selection:
        """The salient tokens as themselves and every anchor frame's merged density peaks, frame after frame in
        raster order; `groups` names, for a token merged into several anchor frames, the nearest at or after it."""
        frames, patches, width = projected.shape
        offsets = patches * torch.arange(frames, device=projected.device)[:, None]
        candidates = take_rows(projected.float(), rest)  # (T, R, C)
        units = F.normalize(candidates, dim=-1)
        peaks = descending_order(density_peaks(candidates))
        segment_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).tolist()
        kept = (salient + offsets).flatten()
        features, sources, joined = [projected.flatten(0, 1)[kept].float()], [kept], []
        for frame, count in enumerate(counts):
            count = min(count, rest.shape[1])  # an anchor frame never holds more than its non-ATS tokens
            if count == 0:
                continue
            pool = [frame]
            if counts[frame] > merged_per_frame:  # the whole segment merges into this frame's anchors
                pool = [t for t in range(frames) if segment_of[t] == segment_of[frame]]
            anchors = peaks[frame, :count]
            merged, joins = merge_into_anchors(candidates[frame, anchors], candidates[pool].flatten(0, 1),
                                               units[frame, anchors], units[pool].flatten(0, 1), self.anchor_weight)
            features.append(merged)
            sources.append(rest[frame, anchors] + frame * patches)
            joined.append((frame, (rest[pool] + offsets[pool]).flatten(), sources[-1][joins]))
        source = torch.cat(sources)
        ranked = torch.sort(source).indices
        is_merged = torch.arange(len(source), device=source.device) >= salient.numel()
        token_of = torch.empty(frames * patches, dtype=torch.long, device=source.device)
        token_of[source[ranked]] = torch.arange(len(source), device=source.device)
        groups = _nearest_groups(joined, token_of, frames, patches) if joined else None
        return Selection(torch.cat(features)[ranked].to(projected.dtype), source[ranked], frames, patches,
                         merged=is_merged[ranked] if joined else None, groups=groups, projected=True)


def _nearest_groups(joined: list[tuple[int, torch.Tensor, torch.Tensor]], token_of: torch.Tensor, frames: int,
                    patches: int) -> torch.Tensor:
    """(anchor frame, members' flat indices, the anchor source each joined) per merge -> (T x N,) each candidate's
    merged token: of the anchor frames that merged it, the first at or after its own frame, else the last before."""
    groups = torch.full((frames * patches,), -1, dtype=torch.long, device=token_of.device)
    best = torch.full((frames * patches,), 2 * frames, dtype=torch.long, device=token_of.device)
    for frame, members, anchors in joined:
        own = members // patches
        distance = torch.where(own <= frame, frame - own, frames + own - frame)
        closer = distance < best[members]
        best[members[closer]] = distance[closer]
        groups[members[closer]] = token_of[anchors[closer]]
    return groups
