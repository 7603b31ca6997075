"""Token merging (ToMe bipartite soft matching, LongVLM segments) in vectorized PyTorch: the spec
the kernels match.

Input size is [batch, tokens, channels]. The kernels add float32 sums in a fixed order (channels
ascending; a destination, then its sources ascending), which this reference leaves to PyTorch:
features agree within float32 rounding, plans exactly unless two similarities tie within it.
Similarities are the package's one cosine (:mod:`vidllm_ext.reference.cosine`), summed in float64
and rounded once: equal tokens score exactly 1 here and in the kernels, so on duplicated or
constant tokens the tie rule (lowest B index; lower A index merges first) alone decides the plan.
"""

from __future__ import annotations

import math

import torch

from vidllm_ext.contracts import token_merge as check
from vidllm_ext.contracts.token_merge import MergePlan, MergeResult, set_sizes
from vidllm_ext.reference.cosine import cosine_similarity_matrix


def best_partner(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partner, score)`` of every row of ``[B, |A|, |B|]``: the most similar B token (NaN
    lowest, ties to the lower index) and its similarity; ``(-1, NaN)`` when B is empty.

    NaN is taken as -inf: a similarity of -inf itself cannot occur (a non-finite sum of squares
    gives NaN, finite ones a cosine in [-1, 1]), so the order is the kernels'.
    """
    batch, a_size, b_size = similarity.shape
    if b_size == 0:
        partner = torch.full((batch, a_size), -1, dtype=torch.int64, device=similarity.device)
        return partner, torch.full((batch, a_size), math.nan, device=similarity.device)
    # max returns the first maximal index; rows of NaN only pick 0 and keep score NaN.
    partner = similarity.masked_fill(similarity.isnan(), -math.inf).max(-1)[1]
    return partner, similarity.gather(-1, partner[..., None])[..., 0]


def rank_order(score: torch.Tensor) -> torch.Tensor:
    """int64 ``[B, |A|]``: indices by descending score, ties to the lower index, NaN last."""
    is_nan = score.isnan()
    order = torch.sort(score.masked_fill(is_nan, -math.inf), descending=True, stable=True)[1]
    return order.gather(-1, torch.sort(is_nan.gather(-1, order).byte(), stable=True)[1])


def bipartite_soft_matching(metric: torch.Tensor, r: int, *, protected: int = 0) -> MergePlan:
    """Plans ToMe's merge of ``r`` tokens per row of ``metric [B, T, C]`` (see
    :class:`~vidllm_ext.contracts.token_merge.MergePlan` and
    :func:`vidllm_ext.ops.bipartite_soft_matching`).
    """
    metric, r, protected = check.check_matching_args(metric, r, protected)
    tokens = metric.shape[1]
    a_size, b_size = set_sizes(tokens, protected)
    r = min(r, b_size)
    values = metric.float()
    a = values[:, protected::2][:, :a_size]
    b = values[:, protected + 1 :: 2][:, :b_size]
    partner, score = best_partner(cosine_similarity_matrix(a, b))
    merged = torch.zeros_like(score, dtype=torch.bool).scatter(1, rank_order(score)[:, :r], True)
    return plan_from_merges(partner, score, merged, tokens, protected, r)


def plan_from_merges(
    partner: torch.Tensor,
    score: torch.Tensor,
    merged: torch.Tensor,
    tokens: int,
    protected: int,
    r: int,
) -> MergePlan:
    """The plan given which A tokens merge (bool ``merged [B, |A|]``, ``r`` per row)."""
    batch, a_size = merged.shape
    device = merged.device
    a_tokens = protected + 2 * torch.arange(a_size, device=device)
    token_merged = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
    token_merged[:, a_tokens] = merged
    survives = ~token_merged
    survivor_slot = survives.cumsum(1) - 1
    destination = torch.where(merged, protected + 2 * partner + 1, a_tokens)
    slot = survivor_slot.clone()
    slot[:, a_tokens] = survivor_slot.gather(1, destination)

    outputs = tokens - r
    # Survivors scatter to their slots; merged tokens to a spare column that is cut off.
    token_index = torch.arange(tokens, device=device).expand(batch, tokens)
    kept_index = torch.zeros(batch, outputs + 1, dtype=torch.int64, device=device)
    kept_index.scatter_(1, torch.where(survives, survivor_slot, outputs), token_index)
    merged_slot = slot[:, a_tokens]
    counts = torch.zeros(batch, outputs, dtype=torch.int64, device=device)
    counts.scatter_add_(1, merged_slot, merged.long())
    source_offsets = torch.cat([counts.new_zeros(batch, 1), counts.cumsum(1)], 1)
    # Merged tokens sorted by (destination slot, token); the others sort after them.
    key = torch.where(merged, merged_slot * tokens + a_tokens, tokens * (tokens + 1))
    source_index = key.sort(1)[0][:, :r] % max(tokens, 1)
    return MergePlan(
        slot=slot,
        kept_index=kept_index[:, :outputs].contiguous(),
        source_offsets=source_offsets,
        source_index=source_index,
        partner=partner,
        score=score,
        r=r,
        protected=protected,
    )


def merge_wavg(
    plan: MergePlan, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_merged [B, T - r, D], size [B, T - r])``: each destination becomes
    ``(s_b x_b + sum s_a x_a) / (s_b + sum s_a)`` (float32, rounded to x's dtype once); tokens that
    received nothing are copied unchanged. Sizes start at 1 when not given."""
    plan, x, size = check.check_merge_input(plan, x, size)
    batch, tokens, dim = x.shape
    outputs = plan.merged_tokens
    weights = torch.ones(batch, tokens, device=x.device) if size is None else size.float()
    total = weights.new_zeros(batch, outputs).scatter_add(1, plan.slot, weights)
    weighted = x.float() * weights[..., None]
    summed = weighted.new_zeros(batch, outputs, dim)
    summed.scatter_add_(1, plan.slot[..., None].expand(-1, -1, dim), weighted)
    averaged = (summed / total[..., None]).to(x.dtype)
    kept = x.gather(1, plan.kept_index[..., None].expand(-1, -1, dim))
    received = plan.source_offsets.diff(dim=1) > 0
    x_merged = torch.where(received[..., None], averaged, kept)
    return x_merged, torch.where(received, total, weights.gather(1, plan.kept_index))


def unmerge(plan: MergePlan, x_merged: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]``: every input token takes the merged token of its slot."""
    plan, x_merged = check.check_unmerge_input(plan, x_merged)
    return x_merged.gather(1, plan.slot[..., None].expand(-1, -1, x_merged.shape[2]))


def chunk_mean_metric(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """float32 ``[..., D / chunks]``: the mean of the ``chunks`` equal channel chunks of x."""
    return x.float().unflatten(-1, (chunks, x.shape[-1] // chunks)).mean(-2)


def merge_schedule(tokens: int, target: int) -> list[int]:
    """Merges per round that take ``tokens`` down to ``target`` (LongVLM): each round merges
    ``min(T_i - target, T_i // 2)``; none when ``tokens <= target``.

    Example:
        >>> merge_schedule(2560, 30)
        [1280, 640, 320, 160, 80, 40, 10]
    """
    rounds = []
    while tokens > target:
        merges = min(tokens - target, tokens // 2)
        rounds.append(merges)
        tokens -= merges
    return rounds


def hierarchical_merge(tokens: torch.Tensor, **options) -> MergeResult:
    """LongVLM's hierarchical merge of ``tokens [F, N, D]`` (or ``[T, D]`` cut by
    ``segment_offsets``; see :func:`vidllm_ext.ops.hierarchical_merge`): the result of
    :func:`hierarchical_merge_with_assignment`, which takes the keyword ``options``."""
    return hierarchical_merge_with_assignment(tokens, **options)[0]


def hierarchical_merge_with_assignment(
    tokens: torch.Tensor,
    *,
    frames_per_segment: int | None = None,
    tokens_per_segment: int = 30,
    metric_chunks: int = 16,
    segment_offsets=None,
) -> tuple[MergeResult, torch.Tensor]:
    """:func:`hierarchical_merge` and int64 ``[T]``, the merged token each input token ended
    in: a merged token is the size-weighted mean, i.e. the plain mean, of the tokens assigned to
    it (what the tests measure features against). Segments of equal length merge together."""
    flat, offsets, target, chunks = check.check_hierarchical_args(
        tokens, frames_per_segment, tokens_per_segment, metric_chunks, segment_offsets
    )
    dim, device = flat.shape[1], flat.device
    lengths = [end - first for first, end in zip(offsets, offsets[1:])]
    out_starts = [0]
    for length in lengths:
        out_starts.append(out_starts[-1] + min(length, target))
    merged = out_starts[-1]
    x = flat.new_empty((merged, dim))
    size = torch.empty(merged, device=device)
    index = torch.empty(merged, dtype=torch.int64, device=device)
    segment = torch.empty(merged, dtype=torch.int64, device=device)
    assignment = torch.empty(flat.shape[0], dtype=torch.int64, device=device)
    groups: dict[int, list[int]] = {}
    for s, length in enumerate(lengths):
        if length:
            groups.setdefault(length, []).append(s)
    for length, group in groups.items():
        members = torch.tensor(group, device=device)
        rows = torch.tensor([offsets[s] for s in group], device=device)[:, None]
        rows = rows + torch.arange(length, device=device)
        group_x, group_size, group_index, slot = _merge_segments(flat[rows], rows, target, chunks)
        outputs = torch.tensor([out_starts[s] for s in group], device=device)[:, None]
        outputs = outputs + torch.arange(group_x.shape[1], device=device)
        x[outputs] = group_x
        size[outputs] = group_size
        index[outputs] = group_index
        segment[outputs] = members[:, None].expand_as(outputs)
        assignment[rows] = outputs.gather(1, slot)
    return MergeResult(x, size, index, segment), assignment


def _merge_segments(
    x: torch.Tensor, index: torch.Tensor, target: int, chunks: int
) -> tuple[torch.Tensor, ...]:
    """Merges every segment (row) of ``x [G, L, D]`` down to min(target, L) tokens; ``index
    [G, L]`` is carried to each output's representative. Returns ``(x [G, m, D], size [G, m],
    index [G, m], slot [G, L])``, slot the output each input token ended in."""
    count, length, _ = x.shape
    size = torch.ones(count, length, device=x.device)
    slot = torch.arange(length, device=x.device).expand(count, length)
    for r in merge_schedule(length, target):
        plan = bipartite_soft_matching(chunk_mean_metric(x, chunks), r)
        x, size = merge_wavg(plan, x, size)
        index = index.gather(1, plan.kept_index)
        slot = plan.slot.gather(1, slot)
    return x, size, index, slot


def proportional_attention_bias(
    size: torch.Tensor, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``log(size)`` as an additive key bias ``[..., 1, 1, T]`` (ToMe's proportional attention)."""
    bias = size.float().log() if dtype is None else size.float().log().to(dtype)
    return bias.unsqueeze(-2).unsqueeze(-2)
