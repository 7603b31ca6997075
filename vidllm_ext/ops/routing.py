"""Layer-skip routing (VideoLLM-MoD mixture of depths) as torch ops backed by the C++/CUDA kernels.

Every op is a ``torch.library.custom_op`` in the ``vidllm`` namespace with a fake implementation,
so ``torch.compile(fullgraph=True)`` traces through it; :func:`gather_rows` and
:func:`scatter_add_rows` are differentiable, their backward passes kernels too. Semantics are those
of :mod:`vidllm_ext.reference.routing`.

Index entries: out of range is a ValueError on the CPU. On CUDA the kernels never touch memory
outside the tensors; they flag the index on the device and turn the rows it would have produced
into NaN (for :func:`scatter_add_rows`, every row), and ``check_index=True`` (or the environment
variable ``VIDLLM_CHECK_INDEX=1``) reads that flag, one host synchronization per call, to raise
the ValueError there too.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from vidllm_ext.contracts import routing as check
from vidllm_ext.ops._backend import rows_contiguous
from vidllm_ext.ops._routing_kernels import (
    accumulate_dtype,
    gather_op,
    scatter_op,
    topk_into_op,
    topk_op,
)


def topk_per_segment(scores: Tensor, segment_offsets: Tensor, keep_ratio: float) -> Tensor:
    """The tokens each segment keeps: ``min(n_s, ceil(keep_ratio * n_s))`` of its highest scores.

    Args:
        scores: ``[tokens]`` float32/float16/bfloat16, CPU or CUDA, any stride.
        segment_offsets: int64 ``[segments + 1]`` on scores' device: segment s is
            ``[o_s, o_{s+1})``; the offsets run from 0 to ``tokens`` without decreasing
            (empty segments allowed). Otherwise ValueError (on CUDA after the one synchronization).
        keep_ratio: in [0, 1]. The product ``keep_ratio * n_s`` is rounded to float64 before the
            ceiling, as ``math.ceil(keep_ratio * n_s)`` does (0.14 of 50 tokens keeps 8).

    Returns:
        int64 ``[K]``, ``K = sum_s k_s``: the kept token indices, ascending. Ranking: higher score
        first, ties to the lower index, NaN below everything. ``K`` depends on the offsets'
        values, so on CUDA this synchronizes the host once; use :func:`topk_per_segment_into`
        inside CUDA graphs.

    Example:
        >>> scores = torch.randn(16 * 256)
        >>> offsets = torch.arange(0, 16 * 256 + 1, 256)
        >>> vidllm_ext.ops.topk_per_segment(scores, offsets, 0.2).shape  # 16 * ceil(51.2)
        torch.Size([832])
    """
    scores = check.check_scores(scores)
    offsets = check.check_segment_offsets(segment_offsets, scores)
    keep_ratio = check.check_keep_ratio(keep_ratio)
    return topk_op(scores, offsets.contiguous(), keep_ratio)


def topk_per_segment_into(
    scores: Tensor,
    segment_offsets: Tensor,
    keep_ratio: float,
    index: Tensor,
    total: Optional[Tensor] = None,
) -> Tensor:
    """Fixed-capacity :func:`topk_per_segment`: no host synchronization, safe in CUDA graphs.

    Args:
        index: int64 ``[capacity]``, contiguous; receives the first ``min(K, capacity)`` kept
            indices, entries past them are left untouched.
        total: optional int64 ``[1]`` output.

    Returns:
        ``total``: int64 ``[1]`` on scores' device holding K (it may exceed capacity). On CUDA,
        offsets that do not run from 0 to ``tokens`` without decreasing make it -1 and nothing is
        written; on the CPU they raise ValueError.

    Example:
        >>> index = torch.empty(4096, dtype=torch.int64)
        >>> total = vidllm_ext.ops.topk_per_segment_into(scores, offsets, 0.2, index)
    """
    scores = check.check_scores(scores)
    offsets = check.check_segment_offsets(segment_offsets, scores)
    keep_ratio = check.check_keep_ratio(keep_ratio)
    check.check_int64_output(index, "index", scores)
    if total is None:
        total = torch.empty(1, dtype=torch.int64, device=scores.device)
    check.check_int64_output(total, "total", scores, size=1)
    topk_into_op(scores, offsets.contiguous(), keep_ratio, index, total)
    return total


def gather_rows(x: Tensor, index: Tensor, *, check_index: Optional[bool] = None) -> Tensor:
    """``x[index]`` by a kernel, differentiable (the backward scatters into zeros by a kernel).

    Args:
        x: ``[rows, dim]`` float32/float16/bfloat16/float64, CPU or CUDA, any row stride.
        index: int64 ``[count]`` on x's device, entries in ``[0, rows)``; they may repeat (the
            gradient then sums their rows, in index order).
        check_index: on CUDA, raise ValueError for out-of-range entries (one host
            synchronization); default: the ``VIDLLM_CHECK_INDEX`` environment variable. The CPU
            always raises.

    Returns:
        ``[count, dim]`` of x's dtype. On CUDA without the check, rows of out-of-range entries
        are NaN.

    Example:
        >>> kept = vidllm_ext.ops.gather_rows(hidden, selected_index)
    """
    x = check.check_rows(x, "x")
    index = check.check_index(index, x)
    enabled = check.check_index_enabled(check_index)
    return gather_op(rows_contiguous(x), index.contiguous(), enabled)


def scatter_add_rows(
    x: Tensor,
    index: Tensor,
    delta: Tensor,
    weight: Optional[Tensor] = None,
    *,
    check_index: Optional[bool] = None,
) -> Tensor:
    """Out of place ``y = x`` except ``y[index] = x[index] + weight[:, None] * delta``.

    Differentiable in x (``grad_x = grad_y``), delta (``weight * grad_y[index]``) and weight
    (``sum_d grad_y[index] * delta``, a deterministic float32 reduction), each by a kernel.

    Args:
        x: ``[rows, dim]`` float32/float16/bfloat16/float64, CPU or CUDA.
        index: int64 ``[count]``: the rows to update, expected unique (routing selects each row
            once). Repeated rows are not checked by default; they get every update, in index
            order, by a slower path. ``check_index=True`` (or ``VIDLLM_CHECK_INDEX=1``) makes
            them, and on CUDA out-of-range entries, a ValueError (one host synchronization on
            CUDA). The CPU always raises for out-of-range entries.
        delta: ``[count, dim]`` of x's dtype.
        weight: optional float ``[count]`` (None: 1); converted to float32 for the kernel.

    Returns:
        ``y`` ``[rows, dim]`` of x's dtype; the sum is float32 (float64 for float64 x) with
        ``weight * delta`` rounded before it is added. On CUDA without the check, an
        out-of-range entry makes every row NaN.

    Example:
        >>> out = vidllm_ext.ops.scatter_add_rows(hidden, selected_index, delta, gate)
    """
    x = check.check_rows(x, "x")
    index = check.check_index(index, x)
    delta = check.check_delta(delta, x, index)
    weight = check.check_weight(weight, index)
    enabled = check.check_index_enabled(check_index)
    if weight is not None:
        weight = weight.to(accumulate_dtype(x.dtype)).contiguous()
    return scatter_op(
        rows_contiguous(x), index.contiguous(), rows_contiguous(delta), weight, enabled
    )


def select_routed_tokens(
    scores: Tensor, is_video: Tensor, segment_offsets: Tensor, keep_ratio: float
) -> Tensor:
    """int64 ``[K]``, ascending: every token that is not video, plus in each segment of the video
    tokens the top ``ceil(keep_ratio * n_s)`` by float32 score (see
    :func:`vidllm_ext.reference.routing.select_routed_tokens`). Synchronizes the host on CUDA
    (the selected count depends on the data).

    Example:
        >>> selected_index = vidllm_ext.ops.select_routed_tokens(s, is_video, offsets, 0.2)
    """
    scores, is_video, segment_offsets = check.check_selection_inputs(
        scores, is_video, segment_offsets
    )
    keep_ratio = check.check_keep_ratio(keep_ratio)
    video_index = is_video.nonzero().flatten()
    video_scores = scores.detach()[video_index].float()
    kept_video = video_index[topk_per_segment(video_scores, segment_offsets, keep_ratio)]
    selected = ~is_video
    selected[kept_video] = True
    return selected.nonzero().flatten()


def routed_update(
    hidden: Tensor,
    scores: Tensor,
    is_video: Tensor,
    segment_offsets: Tensor,
    keep_ratio: float,
    layer_fn: Callable[[Tensor, Tensor], Tensor],
    gate: str = "sigmoid2",
) -> Tensor:
    """One routed decoder layer on one sequence, by the routing kernels: select, gather, run
    ``layer_fn`` on the selected rows, scatter-add the gated update back.

    Same arguments and result as :func:`vidllm_ext.reference.routing.routed_update`:
    ``h + g(s) * delta`` for selected video tokens, ``h + delta`` for every other token (always
    selected), ``h`` for unselected video tokens, where ``delta = layer_fn(h_sel, sel_index) -
    h_sel`` and g is ``gate`` (``"sigmoid2"``: 2 sigmoid(s), ``"raw"``: s, ``"none"``: 1).
    Differentiable in hidden, scores (through g) and whatever ``layer_fn`` closes over.

    Example:
        >>> layer = lambda h, index: mlp(h)
        >>> out = vidllm_ext.ops.routed_update(h, router(h).squeeze(-1), is_video, offsets, 0.2,
        ...                                    layer)
    """
    hidden, scores, is_video, segment_offsets, keep_ratio, gate = check.check_routed_update_args(
        hidden, scores, is_video, segment_offsets, keep_ratio, gate
    )
    selected_index = select_routed_tokens(scores, is_video, segment_offsets, keep_ratio)
    if selected_index.numel() == 0:
        return hidden.clone()
    selected = gather_rows(hidden, selected_index)
    delta = layer_fn(selected, selected_index) - selected
    weight = None  # gate "none": every selected token takes the layer's update as is
    if gate != "none":
        gates = gate_weights(scores[selected_index], gate)
        weight = torch.where(is_video[selected_index], gates, torch.ones_like(gates))
    return scatter_add_rows(hidden, selected_index, delta, weight)


def gate_weights(scores: Tensor, gate: str) -> Tensor:
    """The gate g(s) of a routed video token: ``"sigmoid2"`` 2 sigmoid(s) (a zero score gives
    the layer's exact update), ``"raw"`` s (the MoD paper), ``"none"`` 1."""
    if gate == "sigmoid2":
        return 2 * torch.sigmoid(scores)
    if gate == "raw":
        return scores
    return torch.ones_like(scores)
