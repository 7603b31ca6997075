"""Token merging (ToMe bipartite soft matching, LongVLM segments) as torch ops backed by the
C++/CUDA kernels.

Every op is a ``torch.library.custom_op`` in the ``vidllm`` namespace with a fake implementation,
so ``torch.compile(fullgraph=True)`` traces through it. Semantics are those of
:mod:`vidllm_ext.reference.token_merge`. Matching never writes the similarity matrix: the kernel
keeps a
running best per A token. Merges are deterministic (no float atomics): each destination adds its
sources in ascending token order, so CPU and CUDA results are bitwise equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.contracts import token_merge as check
from vidllm_ext.contracts.token_merge import MergePlan, MergeResult, merged_offsets, set_sizes
from vidllm_ext.ops._backend import C, dl, rows_contiguous, stream_of

# ---- custom ops (inputs validated by the public functions below) ----------------------------


def _plan_shapes(batch: int, tokens: int, protected: int, r: int) -> list[tuple[int, int]]:
    a_size = set_sizes(tokens, protected)[0]
    outputs = tokens - r
    # slot, kept_index, source_offsets, source_index, partner, score
    return [
        (batch, tokens),
        (batch, outputs),
        (batch, outputs + 1),
        (batch, r),
        (batch, a_size),
        (batch, a_size),
    ]


@torch.library.custom_op("vidllm::bipartite_soft_matching", mutates_args=())
def _matching_op(
    metric: Tensor, r: int, protected: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    batch, tokens, _ = metric.shape
    shapes = _plan_shapes(batch, tokens, protected, r)
    slot, kept_index, offsets, source_index, partner = (
        torch.empty(shape, dtype=torch.int64, device=metric.device) for shape in shapes[:5]
    )
    score = torch.empty(shapes[5], dtype=torch.float32, device=metric.device)
    cursor = torch.empty_like(kept_index)
    stream = stream_of(metric)
    C.token_merge_match(dl(metric), dl(partner), dl(score), tokens, protected, stream)
    C.token_merge_plan(
        dl(score),
        dl(partner),
        dl(slot),
        dl(kept_index),
        dl(offsets),
        dl(source_index),
        dl(cursor),
        tokens,
        protected,
        r,
        r,
        stream,
    )
    return slot, kept_index, offsets, source_index, partner, score


@_matching_op.register_fake
def _(metric, r, protected):
    shapes = _plan_shapes(metric.shape[0], metric.shape[1], protected, r)
    plan = [metric.new_empty(shape, dtype=torch.int64) for shape in shapes[:5]]
    return (*plan, metric.new_empty(shapes[5], dtype=torch.float32))


@torch.library.custom_op("vidllm::merge_wavg", mutates_args=())
def _merge_wavg_op(
    x: Tensor,
    size: Optional[Tensor],
    slot: Tensor,
    kept_index: Tensor,
    source_offsets: Tensor,
    source_index: Tensor,
) -> tuple[Tensor, Tensor]:
    batch, tokens, dim = x.shape
    outputs = kept_index.shape[1]
    out = x.new_empty((batch, outputs, dim))
    size_out = torch.empty((batch, outputs), dtype=torch.float32, device=x.device)
    C.token_merge_wavg(
        dl(x),
        dl(size),
        None,
        dl(kept_index),
        dl(source_offsets),
        dl(source_index),
        dl(out),
        dl(size_out),
        None,
        tokens,
        tokens,
        tokens - outputs,
        stream_of(x),
    )
    return out, size_out


@_merge_wavg_op.register_fake
def _(x, size, slot, kept_index, source_offsets, source_index):
    batch, _, dim = x.shape
    outputs = kept_index.shape[1]
    return x.new_empty((batch, outputs, dim)), x.new_empty((batch, outputs), dtype=torch.float32)


def _merge_wavg_setup_context(ctx, inputs, output) -> None:
    _, size, slot, _, source_offsets, _ = inputs
    ctx.save_for_backward(size, slot, source_offsets, output[1])
    ctx.mark_non_differentiable(output[1])  # merged sizes depend on the sizes alone


def _merge_wavg_backward(ctx, grad_x, grad_size):
    # out[s] = sum over the tokens t of slot s of (size_t / size_out[s]) x_t for a slot that
    # received sources; a slot that received none copies its token (weight 1).
    size, slot, source_offsets, size_out = ctx.saved_tensors
    received = (source_offsets.diff(dim=1) > 0).gather(1, slot)
    weights = torch.ones_like(slot, dtype=torch.float32) if size is None else size.float()
    weights = torch.where(received, weights / size_out.gather(1, slot), 1.0)
    grad_input = _unmerge_op(grad_x.contiguous(), slot).float() * weights[..., None]
    return grad_input.to(grad_x.dtype), None, None, None, None, None


_merge_wavg_op.register_autograd(_merge_wavg_backward, setup_context=_merge_wavg_setup_context)


@torch.library.custom_op("vidllm::unmerge", mutates_args=())
def _unmerge_op(x_merged: Tensor, slot: Tensor) -> Tensor:
    batch, tokens = slot.shape
    out = x_merged.new_empty((batch, tokens, x_merged.shape[2]))
    C.token_merge_unmerge(dl(x_merged), dl(slot), dl(out), stream_of(x_merged))
    return out


@_unmerge_op.register_fake
def _(x_merged, slot):
    return x_merged.new_empty((*slot.shape, x_merged.shape[2]))


def _unmerge_setup_context(ctx, inputs, output) -> None:
    x_merged, slot = inputs
    ctx.save_for_backward(slot)
    ctx.merged_tokens = x_merged.shape[1]


def _unmerge_backward(ctx, grad):
    (slot,) = ctx.saved_tensors
    batch, _, dim = grad.shape
    grad_merged = grad.new_zeros((batch, ctx.merged_tokens, dim), dtype=torch.float32)
    grad_merged.scatter_add_(1, slot[..., None].expand(-1, -1, dim), grad.float())
    return grad_merged.to(grad.dtype), None


_unmerge_op.register_autograd(_unmerge_backward, setup_context=_unmerge_setup_context)


def _device_offsets(segment_offsets: list[int], merged: list[int], device) -> Tensor:
    """int64 ``[2, S + 1]`` (segment offsets, merged offsets) on ``device``: one copy from
    pinned memory, which does not wait for the device."""
    host = torch.tensor([segment_offsets, merged], dtype=torch.int64)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


@torch.library.custom_op("vidllm::hierarchical_merge", mutates_args=())
def _hierarchical_op(
    tokens: Tensor, segment_offsets: list[int], tokens_per_segment: int, metric_chunks: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    flat = rows_contiguous(tokens)
    device, dim = flat.device, flat.shape[1]
    merged = merged_offsets(segment_offsets, tokens_per_segment)
    total = merged[-1]
    host_offsets = torch.tensor(segment_offsets, dtype=torch.int64)
    device_offsets = _device_offsets(segment_offsets, merged, device)
    out = flat.new_empty((total, dim))
    sizes = torch.empty(total, dtype=torch.float32, device=device)
    source_index = torch.empty(total, dtype=torch.int64, device=device)
    knobs = (metric_chunks, tokens_per_segment)
    workspace_bytes = C.token_merge_hierarchical_workspace(dl(flat), dl(host_offsets), *knobs)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
    C.token_merge_hierarchical(
        dl(flat),
        dl(host_offsets),
        dl(device_offsets),
        dl(workspace),
        dl(out),
        dl(sizes),
        dl(source_index),
        *knobs,
        stream_of(flat),
    )
    segments = len(segment_offsets) - 1
    segment = torch.repeat_interleave(
        torch.arange(segments, device=device), device_offsets[1].diff(), output_size=total
    )
    return out, sizes, source_index, segment


@_hierarchical_op.register_fake
def _(tokens, segment_offsets, tokens_per_segment, metric_chunks):
    total = merged_offsets(segment_offsets, tokens_per_segment)[-1]
    return (
        tokens.new_empty((total, tokens.shape[1])),
        tokens.new_empty((total,), dtype=torch.float32),
        tokens.new_empty((total,), dtype=torch.int64),
        tokens.new_empty((total,), dtype=torch.int64),
    )


# ---- public API ----------------------------------------------------------------------------


def bipartite_soft_matching(metric: Tensor, r: int, *, protected: int = 0) -> MergePlan:
    """Plans ToMe's bipartite soft matching: which ``r`` tokens of every row merge, and where.

    After the first ``protected`` tokens (never merged, never a destination), set A holds the
    tokens at even offsets and set B those at odd offsets. Each A token's partner is its most
    similar B token by cosine similarity from float32 sums, ``dot(a, b) / sqrt(max(|a|^2, 1e-16)
    * max(|b|^2, 1e-16))`` (equal tokens score exactly 1; NaN when a squared norm is not finite;
    ties to the lower B index); the ``r`` A tokens with the highest scores merge into their
    partners (ties to the lower index, NaN scores last). ``r`` is capped at
    ``floor((T - protected) / 2)``.

    Args:
        metric: ``[B, T, C]`` float32/float16/bfloat16, CPU or CUDA (e.g. attention keys, or
            features). Any strides; a last dimension with stride != 1 is copied first.
        r: tokens to merge per row, >= 0.
        protected: leading tokens per row that take no part (e.g. a class token), 0 <= p <= T.

    Returns:
        :class:`~vidllm_ext.contracts.token_merge.MergePlan` of device tensors, for
        :func:`merge_wavg` and
        :func:`unmerge`. No host synchronization.

    Example:
        >>> metric = torch.randn(2, 197, 64)
        >>> plan = vidllm_ext.ops.bipartite_soft_matching(metric, 16, protected=1)
        >>> x_merged, size = vidllm_ext.ops.merge_wavg(plan, torch.randn(2, 197, 768))
        >>> x_merged.shape, size.shape
        (torch.Size([2, 181, 768]), torch.Size([2, 181]))
    """
    metric, r, protected = check.check_matching_args(metric, r, protected)
    r = min(r, set_sizes(metric.shape[1], protected)[1])
    tensors = _matching_op(rows_contiguous(metric), r, protected)
    return MergePlan(*tensors, r=r, protected=protected)


def merge_wavg(plan: MergePlan, x: Tensor, size: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Merges ``x`` under ``plan`` with a size-weighted average.

    A destination becomes ``(s_b x_b + sum s_a x_a) / (s_b + sum s_a)`` over its sources, added
    in float32 (destination first, then sources by ascending token index) and rounded to x's
    dtype once; its size becomes ``s_b + sum s_a``. A token that received nothing is copied
    unchanged. Differentiable in ``x`` (not in ``size``).

    Args:
        plan: from :func:`bipartite_soft_matching` on ``[B, T, ·]``.
        x: ``[B, T, D]`` float32/float16/bfloat16 on the plan's device; any strides.
        size: optional float ``[B, T]`` of positive token sizes (all 1 when None).

    Returns:
        ``(x_merged [B, T - r, D]`` of x's dtype, ``size float32 [B, T - r])``.

    Example:
        >>> x_merged, size = vidllm_ext.ops.merge_wavg(plan, x)
        >>> x_merged, size = vidllm_ext.ops.merge_wavg(next_plan, x_merged, size)
    """
    plan, x, size = check.check_merge_input(plan, x, size)
    size = None if size is None else size.float().contiguous()
    plan_tensors = (plan.slot, plan.kept_index, plan.source_offsets, plan.source_index)
    return _merge_wavg_op(rows_contiguous(x), size, *(t.contiguous() for t in plan_tensors))


def unmerge(plan: MergePlan, x_merged: Tensor) -> Tensor:
    """Maps merged tokens back to every input token: ``out[b, t] = x_merged[b, plan.slot[b, t]]``.

    Args:
        plan: the plan that produced ``x_merged``.
        x_merged: ``[B, T - r, D]`` float on the plan's device.

    Returns:
        ``[B, T, D]`` of x_merged's dtype. Differentiable.

    Example:
        >>> restored = vidllm_ext.ops.unmerge(plan, x_merged)  # [B, T, D]
    """
    plan, x_merged = check.check_unmerge_input(plan, x_merged)
    return _unmerge_op(rows_contiguous(x_merged), plan.slot.contiguous())


def hierarchical_merge(
    tokens: Tensor,
    *,
    frames_per_segment: Optional[int] = None,
    tokens_per_segment: int = 30,
    metric_chunks: int = 16,
    segment_offsets: Optional[Tensor | Sequence[int]] = None,
) -> MergeResult:
    """LongVLM's hierarchical merge of one video's tokens (or several videos'), segment by
    segment.

    Segments are either frames: ``tokens [F, N, D]`` cut into segments of ``frames_per_segment``
    consecutive frames (default 10; the last may be shorter), each flattened in (frame, position)
    order; or given: ``tokens [T, D]`` with ``segment_offsets``, segment ``s`` being tokens
    ``[segment_offsets[s], segment_offsets[s + 1])`` (segments of any lengths, e.g. what frame
    drop kept; an empty segment gives no tokens). Each segment is merged independently, jointly
    across space and time, by rounds of bipartite soft matching with ``r_i = min(T_i - M, T_i //
    2)`` until it holds ``M = tokens_per_segment`` tokens (a segment holding fewer keeps them
    all). Each round's metric is the features' mean over ``metric_chunks`` equal channel chunks
    (LongVLM uses 16); sizes carry across rounds. All segments of a round run in one launch per
    stage (one call into the kernels for the whole merge), each on its own schedule, which the
    kernels compute (csrc/token_merge/token_merge.h ``merge_round``): no host synchronization.

    Args:
        tokens: ``[F, N, D]`` (F frames of N tokens) or, with ``segment_offsets``, ``[T, D]``;
            float32/float16/bfloat16, CPU or CUDA.
        frames_per_segment: positive int (default 10); not with ``segment_offsets``.
        tokens_per_segment: positive int.
        metric_chunks: positive divisor of D.
        segment_offsets: int64 ``[S + 1]`` from 0 to T, never decreasing, as a CPU tensor or a
            sequence of ints: the output size is computed from it on the host, so a CUDA tensor
            is refused (ValueError; pass ``.cpu()``, which synchronizes once). On a GPU the
            offsets reach the device by one copy from pinned memory, which does not wait.

    Returns:
        :class:`~vidllm_ext.contracts.token_merge.MergeResult` ``(tokens [K, D], sizes float32 [K],
        source_index int64 [K], segment int64 [K])``, segment after segment, each segment's
        tokens in ascending order of their representatives, ``K = sum_s min(n_s, M)``;
        ``source_index`` is the flat index (``f * N + n``, or the row of ``[T, D]``) of each
        merged token's representative, so the caller can take its position ids.

    Example:
        >>> video = torch.randn(100, 256, 1024)
        >>> result = vidllm_ext.ops.hierarchical_merge(video)  # 10 segments of 30 tokens
        >>> result.tokens.shape, int(result.sizes.sum())
        (torch.Size([300, 1024]), 25600)
        >>> kept = torch.randn(700, 1024)  # segments of 500, 0, 20 and 180 tokens
        >>> offsets = [0, 500, 500, 520, 700]
        >>> result = vidllm_ext.ops.hierarchical_merge(kept, segment_offsets=offsets)
        >>> result.tokens.shape, result.segment.bincount().tolist()
        (torch.Size([80, 1024]), [30, 0, 20, 30])
    """
    flat, offsets, tokens_per_segment, metric_chunks = check.check_hierarchical_args(
        tokens, frames_per_segment, tokens_per_segment, metric_chunks, segment_offsets
    )
    return MergeResult(*_hierarchical_op(flat, offsets, tokens_per_segment, metric_chunks))


def proportional_attention_bias(size: Tensor, *, dtype: Optional[torch.dtype] = None) -> Tensor:
    """ToMe's proportional attention: ``log(size)`` as an additive bias on the attention keys, so
    a merged token of size s weighs like the s tokens it stands for.

    Args:
        size: float32/float16/bfloat16 ``[..., T]`` (at least 1-D) token sizes (from
            :func:`merge_wavg` or :func:`hierarchical_merge`), finite and positive: checked on
            the CPU (ValueError), see :mod:`vidllm_ext.contracts.structure`.
        dtype: the bias dtype (default float32). SDPA wants the query's dtype for a float mask.

    Returns:
        ``[..., 1, 1, T]``: for sizes ``[B, T]``, ``[B, 1, 1, T]`` broadcasts over the heads and
        queries of attention scores ``[B, heads, queries, T]``.

    Example:
        >>> x_merged, size = vidllm_ext.ops.merge_wavg(plan, x)             # size [B, T']
        >>> bias = vidllm_ext.ops.proportional_attention_bias(size, dtype=q.dtype)
        >>> out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # q, k, v [B, H, T', d]
    """
    size = check.check_sizes(size)
    dtype = check.check_bias_dtype(dtype)
    bias = size.float().log()
    if dtype is not None:
        bias = bias.to(dtype)
    return bias.unsqueeze(-2).unsqueeze(-2)


__all__ = [
    "bipartite_soft_matching",
    "hierarchical_merge",
    "merge_wavg",
    "proportional_attention_bias",
    "unmerge",
]


def chunk_mean_metric(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """float32 ``[..., D / chunks]``: the mean of the ``chunks`` equal channel chunks of x."""
    return x.float().unflatten(-1, (chunks, x.shape[-1] // chunks)).mean(-2)
