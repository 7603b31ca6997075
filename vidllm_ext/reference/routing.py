"""Layer-skip routing (VideoLLM-MoD mixture of depths) in vectorized PyTorch: the spec the
kernels match, and the routed layer's math for one sequence (:func:`routed_update`).

Ranking: higher score first, ties to the lower index, NaN below everything (-0.0 ties +0.0).
Accumulation: float32 (float64 for float64 rows); a scatter's update ``w * delta`` is rounded
before it is added to ``x``, as two separate torch ops do.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from vidllm_ext.contracts import routing as check


def keep_counts(tokens_per_segment: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """int64 [segments]: ``k_s = min(n_s, ceil(keep_ratio * n_s))``, the product rounded to
    float64 first, exactly as ``math.ceil(keep_ratio * n)`` (0.14 of 50 keeps 8, since
    ``0.14 * 50 == 7.000000000000001``)."""
    tokens = tokens_per_segment.long()
    return torch.minimum(torch.ceil(tokens.double() * keep_ratio).long(), tokens)


def check_offset_values(segment_offsets: torch.Tensor, tokens: int) -> None:
    """ValueError unless the offsets run from 0 to ``tokens`` without decreasing."""
    offsets = segment_offsets.cpu()
    what = (
        f"segment_offsets: expected offsets that run from 0 to {tokens} (the number of scores) "
        "without decreasing"
    )
    if offsets[0] != 0:
        raise ValueError(f"{what}, got segment_offsets[0] = {int(offsets[0])}")
    decreasing = (offsets[:-1] > offsets[1:]).nonzero()
    if decreasing.numel():
        s = int(decreasing[0])
        raise ValueError(
            f"{what}, got segment_offsets[{s}] = {int(offsets[s])} > "
            f"segment_offsets[{s + 1}] = {int(offsets[s + 1])}"
        )
    if offsets[-1] != tokens:
        last = offsets.shape[0] - 1
        raise ValueError(f"{what}, got segment_offsets[{last}] = {int(offsets[-1])}")


def check_index_values(index: torch.Tensor, rows: int, *, unique: bool, rows_name: str) -> None:
    """ValueError unless every entry lies in [0, rows) (and, when ``unique``, no row repeats)."""
    outside = ((index < 0) | (index >= rows)).nonzero()
    if outside.numel():
        k = int(outside[0])
        raise ValueError(
            f"index: expected entries in [0, {rows}) (the rows of {rows_name}), "
            f"got index[{k}] = {int(index[k])}"
        )
    if unique and index.numel():
        order = torch.sort(index, stable=True).indices
        repeated = (index[order[1:]] == index[order[:-1]]).nonzero()
        if repeated.numel():
            first, second = (int(k) for k in order[int(repeated[0]) : int(repeated[0]) + 2])
            raise ValueError(
                f"index: expected every row at most once (check_index is on), got "
                f"{int(index[first])} at index[{first}] and index[{second}]"
            )


def topk_per_segment(
    scores: torch.Tensor, segment_offsets: torch.Tensor, keep_ratio: float
) -> torch.Tensor:
    """int64 [K], ascending: in each segment ``[o_s, o_{s+1})`` of scores the
    ``min(n_s, ceil(keep_ratio * n_s))`` highest-ranked tokens."""
    scores = check.check_scores(scores)
    offsets = check.check_segment_offsets(segment_offsets, scores)
    keep_ratio = check.check_keep_ratio(keep_ratio)
    tokens = scores.shape[0]
    check_offset_values(offsets, tokens)
    counts = offsets.diff()
    segment = torch.repeat_interleave(torch.arange(counts.shape[0], device=scores.device), counts)
    values = scores.float()
    # Three stable sorts: by score descending (ties keep token order), NaN last, then by segment.
    order = torch.sort(values.nan_to_num(nan=-math.inf), descending=True, stable=True).indices
    order = order[torch.sort(values[order].isnan().byte(), stable=True).indices]
    order = order[torch.sort(segment[order], stable=True).indices]
    rank_in_segment = torch.arange(tokens, device=scores.device) - offsets[segment[order]]
    keep = torch.zeros(tokens, dtype=torch.bool, device=scores.device)
    keep[order] = rank_in_segment < keep_counts(counts, keep_ratio)[segment[order]]
    return keep.nonzero().flatten()


def gather_rows(
    x: torch.Tensor, index: torch.Tensor, *, check_index: bool | None = None
) -> torch.Tensor:
    """[count, dim]: ``x[index]``; entries must lie in [0, rows)."""
    x = check.check_rows(x, "x")
    index = check.check_index(index, x)
    check.check_index_enabled(check_index)
    check_index_values(index, x.shape[0], unique=False, rows_name="source")
    return x[index]


def scatter_add_rows(
    x: torch.Tensor,
    index: torch.Tensor,
    delta: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    check_index: bool | None = None,
) -> torch.Tensor:
    """[rows, dim], out of place: ``y = x`` except ``y[index] = x[index] + weight[:, None] *
    delta`` (weight None: 1), computed in float32 (float64 for float64 x). Rows named twice get
    both updates, in index order; ``check_index`` makes that a ValueError."""
    x = check.check_rows(x, "x")
    index = check.check_index(index, x)
    delta = check.check_delta(delta, x, index)
    weight = check.check_weight(weight, index)
    unique = check.check_index_enabled(check_index)
    check_index_values(index, x.shape[0], unique=unique, rows_name="x")
    accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
    update = delta.to(accumulate)
    if weight is not None:
        update = weight.to(accumulate)[:, None] * update
    return x.to(accumulate).index_add(0, index, update).to(x.dtype)


def gate_weights(scores: torch.Tensor, gate: str) -> torch.Tensor:
    """The gate g(s) of a routed video token: ``"sigmoid2"`` 2 * sigmoid(s) (a zero score gives
    the layer's exact update), ``"raw"`` s (the MoD paper), ``"none"`` 1."""
    gate = check.check_gate(gate)
    if gate == "sigmoid2":
        return 2 * torch.sigmoid(scores)
    if gate == "raw":
        return scores
    return torch.ones_like(scores)


def _segment_top(scores: list[float], keep: int) -> list[int]:
    """Positions of the ``keep`` highest-ranked scores of one segment: higher first, ties to the
    lower position, NaN below everything."""
    ranked = sorted(
        range(len(scores)),
        key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0, i),
    )
    return ranked[:keep]


def select_routed_tokens(
    scores: torch.Tensor,
    is_video: torch.Tensor,
    segment_offsets: torch.Tensor,
    keep_ratio: float,
) -> torch.Tensor:
    """int64 [K], ascending: every token that is not video, plus in each segment of the video
    tokens (offsets count video tokens only, in sequence order) the top
    ``min(n_s, ceil(keep_ratio * n_s))`` by float32 score.

    Written token by token from the definition (one segment at a time, in Python), independent of
    :func:`topk_per_segment` and of the ops' composition.
    """
    scores, is_video, segment_offsets = check.check_selection_inputs(
        scores, is_video, segment_offsets
    )
    keep_ratio = check.check_keep_ratio(keep_ratio)
    video_positions = is_video.nonzero().flatten().tolist()
    check_offset_values(segment_offsets, len(video_positions))
    video_scores = scores.detach().float().cpu()[video_positions].tolist()
    offsets = segment_offsets.tolist()
    chosen = [position for position, video in enumerate(is_video.tolist()) if not video]
    for start, end in zip(offsets[:-1], offsets[1:]):
        keep = min(end - start, math.ceil(keep_ratio * (end - start)))
        chosen += [video_positions[start + i] for i in _segment_top(video_scores[start:end], keep)]
    return torch.tensor(sorted(chosen), dtype=torch.int64, device=scores.device)


def routed_update(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    is_video: torch.Tensor,
    segment_offsets: torch.Tensor,
    keep_ratio: float,
    layer_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    gate: str = "sigmoid2",
) -> torch.Tensor:
    """One routed decoder layer on one sequence (VideoLLM-MoD; issue 7, section 2).

    Args:
        hidden: [tokens, dim] input hidden states h.
        scores: [tokens] router scores s (a Linear(dim -> 1) of h); only video tokens' are used.
        is_video: bool [tokens]; every other token is always selected.
        segment_offsets: int64 [segments + 1] over the video tokens in sequence order (a segment
            is one temporal step of one video), from 0 to ``is_video.sum()``.
        keep_ratio: fraction of each segment's video tokens that pass through the layer.
        layer_fn: ``layer_fn(selected_hidden [K, dim], selected_index [K]) -> [K, dim]``, the
            wrapped layer on the selected tokens in their original order (``selected_index``
            gives their positions, e.g. to pick position ids).
        gate: ``"sigmoid2"`` (g = 2 sigmoid(s)), ``"raw"`` (g = s) or ``"none"`` (g = 1).

    Returns:
        [tokens, dim]: ``h + g(s) * delta`` for selected video tokens, ``h + delta`` for the
        other selected tokens, ``h`` for the rest, with ``delta = layer_fn(h_sel) - h_sel``.
        The update ``g * delta`` is formed in float32 (float64 for float64 h) and rounded before
        it is added to ``h``; the sum is rounded to h's dtype. Given float64 inputs this is the
        float64 oracle of the routed layer. It is written from the definition with plain
        indexing, independent of the routing kernels' primitives and of the ops' composition.
    """
    hidden, scores, is_video, segment_offsets, keep_ratio, gate = check.check_routed_update_args(
        hidden, scores, is_video, segment_offsets, keep_ratio, gate
    )
    selected_index = select_routed_tokens(scores, is_video, segment_offsets, keep_ratio)
    if selected_index.numel() == 0:
        return hidden.clone()
    selected = hidden[selected_index]
    delta = layer_fn(selected, selected_index) - selected
    gates = gate_weights(scores[selected_index], gate)
    gates = torch.where(is_video[selected_index], gates, torch.ones_like(gates))
    accumulate = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    update = gates.to(accumulate)[:, None] * delta.to(accumulate)
    rows = hidden.to(accumulate)
    routed = rows.index_put((selected_index,), rows[selected_index] + update)
    return routed.to(hidden.dtype)
