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

from vidllm_ext import _routing_checks as check
from vidllm_ext.ops._backend import C, dl, rows_contiguous, stream_of
from vidllm_ext.reference.routing import gate_weights

INDEX_OUT_OF_RANGE = 1  # status bits written by the gather and scatter kernels
INDEX_REPEATED = 2

# ---- custom ops (inputs validated by the public functions below) ----------------------------


def _topk(scores: Tensor, offsets: Tensor, keep_ratio: float, index, total: Tensor) -> None:
    slot_start = torch.empty(offsets.shape[0] - 1, dtype=torch.int64, device=scores.device)
    C.routing_topk(
        dl(scores), dl(offsets), keep_ratio, dl(slot_start), dl(total), dl(index), stream_of(scores)
    )


@torch.library.custom_op("vidllm::topk_per_segment", mutates_args=())
def _topk_op(scores: Tensor, segment_offsets: Tensor, keep_ratio: float) -> Tensor:
    total = torch.empty(1, dtype=torch.int64, device=scores.device)
    _topk(scores, segment_offsets, keep_ratio, None, total)
    selected = int(total)  # the one host synchronization of the convenience form (CUDA)
    if selected < 0:  # CUDA flagged the offsets (the CPU binding raised already)
        C.routing_check_offsets(dl(segment_offsets.cpu()), scores.shape[0])
    index = torch.empty(selected, dtype=torch.int64, device=scores.device)
    _topk(scores, segment_offsets, keep_ratio, index, total)
    return index


@_topk_op.register_fake
def _(scores, segment_offsets, keep_ratio):
    selected = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((selected,), dtype=torch.int64)


@torch.library.custom_op("vidllm::topk_per_segment_into", mutates_args=("index", "total"))
def _topk_into_op(
    scores: Tensor, segment_offsets: Tensor, keep_ratio: float, index: Tensor, total: Tensor
) -> None:
    _topk(scores, segment_offsets, keep_ratio, index, total)


@_topk_into_op.register_fake
def _(scores, segment_offsets, keep_ratio, index, total) -> None:
    return None


def _raise_if_flagged(status: Tensor, index: Tensor, rows: int, rows_name: str, unique: bool):
    """CUDA with check_index: reads the kernels' status word (one host synchronization) and
    raises the ValueError the CPU binding raises. CPU: the binding has raised already."""
    if status.device.type == "cpu":
        return
    flags = int(status) & (INDEX_OUT_OF_RANGE | (INDEX_REPEATED if unique else 0))
    if flags:
        C.routing_check_index(dl(index.cpu()), rows, unique, rows_name)


def _gather(source, index, weight, other, need_out: bool, check_index: bool):
    count, dim = index.shape[0], source.shape[1]
    out = source.new_empty((count, dim)) if need_out else None
    dot = None
    if other is not None:
        dot = torch.empty(count, dtype=weight.dtype, device=source.device)
    status = torch.empty(1, dtype=torch.int32, device=source.device)
    C.routing_gather(
        dl(source), dl(index), dl(weight), dl(other), dl(dot), dl(out), dl(status),
        stream_of(source),
    )  # fmt: skip
    if check_index:
        _raise_if_flagged(status, index, source.shape[0], "source", unique=False)
    return out, dot


def _scatter(x, rows: int, index, delta, weight, check_index: bool) -> Tensor:
    y = delta.new_empty((rows, delta.shape[1]))
    row_source = torch.empty(rows, dtype=torch.int64, device=delta.device)
    status = torch.empty(1, dtype=torch.int32, device=delta.device)
    C.routing_scatter(
        dl(x), dl(index), dl(delta), dl(weight), dl(y), dl(row_source), dl(status), check_index,
        stream_of(delta),
    )  # fmt: skip
    if check_index:
        _raise_if_flagged(status, index, rows, "x", unique=True)
    return y


@torch.library.custom_op("vidllm::gather_rows", mutates_args=())
def _gather_op(x: Tensor, index: Tensor, check_index: bool) -> Tensor:
    return _gather(x, index, None, None, True, check_index)[0]


@_gather_op.register_fake
def _(x, index, check_index):
    return x.new_empty((index.shape[0], x.shape[1]))


@torch.library.custom_op("vidllm::gather_rows_backward", mutates_args=())
def _gather_backward_op(grad_out: Tensor, index: Tensor, rows: int) -> Tensor:
    return _scatter(None, rows, index, grad_out, None, False)


@_gather_backward_op.register_fake
def _(grad_out, index, rows):
    return grad_out.new_empty((rows, grad_out.shape[1]))


def _gather_setup_context(ctx, inputs, output) -> None:
    x, index, _ = inputs
    ctx.rows = x.shape[0]
    ctx.save_for_backward(index)


def _gather_backward(ctx, grad_out):
    (index,) = ctx.saved_tensors
    grad_x = _gather_backward_op(rows_contiguous(grad_out), index, ctx.rows)
    return grad_x, None, None


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup_context)


@torch.library.custom_op("vidllm::scatter_add_rows", mutates_args=())
def _scatter_op(
    x: Tensor, index: Tensor, delta: Tensor, weight: Optional[Tensor], check_index: bool
) -> Tensor:
    return _scatter(x, x.shape[0], index, delta, weight, check_index)


@_scatter_op.register_fake
def _(x, index, delta, weight, check_index):
    return x.new_empty(x.shape)


@torch.library.custom_op("vidllm::scatter_add_rows_backward", mutates_args=())
def _scatter_backward_op(
    grad_y: Tensor,
    index: Tensor,
    delta: Tensor,
    weight: Optional[Tensor],
    need_delta: bool,
    need_weight: bool,
) -> tuple[Tensor, Tensor]:
    """(grad_delta = weight * grad_y[index] ([0, dim] unless need_delta), grad_weight =
    sum_d grad_y[index] * delta ([0] unless need_weight)), in one pass over the rows."""
    other = delta if need_weight else None
    if need_weight and weight is None:
        weight = torch.ones(index.shape[0], dtype=_accumulate(delta.dtype), device=delta.device)
    grad_delta, grad_weight = _gather(grad_y, index, weight, other, need_delta, False)
    if grad_delta is None:
        grad_delta = delta.new_empty((0, delta.shape[1]))
    if grad_weight is None:
        grad_weight = torch.empty(0, dtype=_accumulate(delta.dtype), device=delta.device)
    return grad_delta, grad_weight


@_scatter_backward_op.register_fake
def _(grad_y, index, delta, weight, need_delta, need_weight):
    count = index.shape[0] if need_delta else 0
    return (
        delta.new_empty((count, delta.shape[1])),
        delta.new_empty((index.shape[0] if need_weight else 0,), dtype=_accumulate(delta.dtype)),
    )


def _scatter_setup_context(ctx, inputs, output) -> None:
    _, index, delta, weight, _ = inputs
    ctx.save_for_backward(index, delta, weight)


def _scatter_backward(ctx, grad_y):
    index, delta, weight = ctx.saved_tensors
    need_x, _, need_delta, need_weight, _ = ctx.needs_input_grad
    need_weight = need_weight and weight is not None
    grad_delta = grad_weight = None
    if need_delta or need_weight:
        grad_delta, grad_weight = _scatter_backward_op(
            rows_contiguous(grad_y), index, delta, weight, need_delta, need_weight
        )
    return (
        grad_y if need_x else None,
        None,
        grad_delta if need_delta else None,
        grad_weight if need_weight else None,
        None,
    )


_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup_context)


def _accumulate(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- public API ----------------------------------------------------------------------------


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
    return _topk_op(scores, offsets.contiguous(), keep_ratio)


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
    _topk_into_op(scores, offsets.contiguous(), keep_ratio, index, total)
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
    return _gather_op(rows_contiguous(x), index.contiguous(), enabled)


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
        weight = weight.to(_accumulate(x.dtype)).contiguous()
    return _scatter_op(
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
    hidden, scores, is_video, segment_offsets = check.check_routed_inputs(
        hidden, scores, is_video, segment_offsets
    )
    keep_ratio = check.check_keep_ratio(keep_ratio)
    gate = check.check_gate(gate)
    selected_index = select_routed_tokens(scores, is_video, segment_offsets, keep_ratio)
    if selected_index.numel() == 0:
        return hidden.clone()
    selected = gather_rows(hidden, selected_index)
    delta = layer_fn(selected, selected_index) - selected
    weight = None
    if gate != "none":
        gates = gate_weights(scores[selected_index], gate)
        weight = torch.where(is_video[selected_index], gates, torch.ones_like(gates))
    return scatter_add_rows(hidden, selected_index, delta, weight)
