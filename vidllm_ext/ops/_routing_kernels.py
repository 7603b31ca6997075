"""The routing kernels as ``torch.library.custom_op``s in the ``vidllm`` namespace, with fake
implementations and autograd (the backward passes run kernels too). Inputs are validated by the
public functions in :mod:`vidllm_ext.ops.routing`; these only allocate outputs and launch.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.ops._backend import C, dl, rows_contiguous, stream_of, writes_into

INDEX_OUT_OF_RANGE = 1  # status bits written by the gather and scatter kernels
INDEX_REPEATED = 2


def _topk(scores: Tensor, offsets: Tensor, keep_ratio: float, index, total: Tensor) -> None:
    slot_start = torch.empty(offsets.shape[0] - 1, dtype=torch.int64, device=scores.device)
    C.routing_topk(
        dl(scores), dl(offsets), keep_ratio, dl(slot_start), dl(total), dl(index), stream_of(scores)
    )


@torch.library.custom_op("vidllm::topk_per_segment", mutates_args=())
def topk_op(scores: Tensor, segment_offsets: Tensor, keep_ratio: float) -> Tensor:
    total = torch.empty(1, dtype=torch.int64, device=scores.device)
    _topk(scores, segment_offsets, keep_ratio, None, total)
    selected = int(total)  # the one host synchronization of the convenience form (CUDA)
    if selected < 0:  # CUDA flagged the offsets (the CPU binding raised already)
        C.routing_check_offsets(dl(segment_offsets.cpu()), scores.shape[0])
    index = torch.empty(selected, dtype=torch.int64, device=scores.device)
    _topk(scores, segment_offsets, keep_ratio, index, total)
    return index


@topk_op.register_fake
def _(scores, segment_offsets, keep_ratio):
    selected = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((selected,), dtype=torch.int64)


@writes_into("topk_per_segment_into", ("index", "total"))
def topk_into_op(
    scores: Tensor, segment_offsets: Tensor, keep_ratio: float, index: Tensor, total: Tensor
) -> None:
    _topk(scores, segment_offsets, keep_ratio, index, total)


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
    # Workspaces: the update(s) of each row, and each update's successor in its row.
    row_source = torch.empty(rows, dtype=torch.int64, device=delta.device)
    next_update = torch.empty(index.shape[0], dtype=torch.int64, device=delta.device)
    status = torch.empty(1, dtype=torch.int32, device=delta.device)
    C.routing_scatter(
        dl(x), dl(index), dl(delta), dl(weight), dl(y), dl(row_source), dl(next_update),
        dl(status), check_index, stream_of(delta),
    )  # fmt: skip
    if check_index:
        _raise_if_flagged(status, index, rows, "x", unique=True)
    return y


@torch.library.custom_op("vidllm::gather_rows", mutates_args=())
def gather_op(x: Tensor, index: Tensor, check_index: bool) -> Tensor:
    return _gather(x, index, None, None, True, check_index)[0]


@gather_op.register_fake
def _(x, index, check_index):
    return x.new_empty((index.shape[0], x.shape[1]))


@torch.library.custom_op("vidllm::gather_rows_backward", mutates_args=())
def gather_backward_op(grad_out: Tensor, index: Tensor, rows: int) -> Tensor:
    return _scatter(None, rows, index, grad_out, None, False)


@gather_backward_op.register_fake
def _(grad_out, index, rows):
    return grad_out.new_empty((rows, grad_out.shape[1]))


def _gather_setup_context(ctx, inputs, output) -> None:
    x, index, _ = inputs
    ctx.rows = x.shape[0]
    ctx.save_for_backward(index)


def _gather_backward(ctx, grad_out):
    (index,) = ctx.saved_tensors
    grad_x = gather_backward_op(rows_contiguous(grad_out), index, ctx.rows)
    return grad_x, None, None


gather_op.register_autograd(_gather_backward, setup_context=_gather_setup_context)


@torch.library.custom_op("vidllm::scatter_add_rows", mutates_args=())
def scatter_op(
    x: Tensor, index: Tensor, delta: Tensor, weight: Optional[Tensor], check_index: bool
) -> Tensor:
    return _scatter(x, x.shape[0], index, delta, weight, check_index)


@scatter_op.register_fake
def _(x, index, delta, weight, check_index):
    return x.new_empty(x.shape)


@torch.library.custom_op("vidllm::scatter_add_rows_backward", mutates_args=())
def scatter_backward_op(
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
    accumulate = accumulate_dtype(delta.dtype)
    if need_weight and weight is None:
        weight = torch.ones(index.shape[0], dtype=accumulate, device=delta.device)
    grad_delta, grad_weight = _gather(grad_y, index, weight, other, need_delta, False)
    if grad_delta is None:
        grad_delta = delta.new_empty((0, delta.shape[1]))
    if grad_weight is None:
        grad_weight = torch.empty(0, dtype=accumulate, device=delta.device)
    return grad_delta, grad_weight


@scatter_backward_op.register_fake
def _(grad_y, index, delta, weight, need_delta, need_weight):
    delta_rows = index.shape[0] if need_delta else 0
    weight_rows = index.shape[0] if need_weight else 0
    return (
        delta.new_empty((delta_rows, delta.shape[1])),
        delta.new_empty((weight_rows,), dtype=accumulate_dtype(delta.dtype)),
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
        grad_delta, grad_weight = scatter_backward_op(
            rows_contiguous(grad_y), index, delta, weight, need_delta, need_weight
        )
    return (
        grad_y if need_x else None,
        None,
        grad_delta if need_delta else None,
        grad_weight if need_weight else None,
        None,
    )


scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup_context)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
