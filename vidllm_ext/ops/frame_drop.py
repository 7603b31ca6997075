"""Frame-difference token drop (TimeChat-Online) as torch ops backed by the C++/CUDA kernels.

Every op is a ``torch.library.custom_op`` in the ``vidllm`` namespace with a fake implementation,
so ``torch.compile(fullgraph=True)`` traces through it. Semantics are those of
:mod:`vidllm_ext.reference.frame_drop`; the kernels read each feature row once to score it and each
kept
row once more to gather it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.contracts import frame_drop as check
from vidllm_ext.contracts.frame_drop import DTDResult
from vidllm_ext.ops._backend import C, dl, rows_contiguous, stream_of, writes_into

# ---- custom ops (inputs validated by the public functions below) ----------------------------


@torch.library.custom_op("vidllm::dtd_scores", mutates_args=())
def _scores_op(frames: Tensor, prev: Optional[Tensor], method: str) -> Tensor:
    scores = torch.empty(frames.shape[:2], dtype=torch.float32, device=frames.device)
    C.frame_drop_score(dl(frames), dl(prev), dl(scores), method, stream_of(frames))
    return scores


@_scores_op.register_fake
def _(frames: Tensor, prev: Optional[Tensor], method: str) -> Tensor:
    return frames.new_empty(frames.shape[:2], dtype=torch.float32)


@torch.library.custom_op("vidllm::dtd_keep_mask", mutates_args=())
def _keep_mask_op(
    frames: Tensor, prev: Optional[Tensor], threshold: float, method: str, mode: str
) -> tuple[Tensor, Tensor]:
    stream = stream_of(frames)
    scores = torch.empty(frames.shape[:2], dtype=torch.float32, device=frames.device)
    keep_mask = torch.empty(frames.shape[:2], dtype=torch.bool, device=frames.device)
    counts = torch.empty(frames.shape[0], dtype=torch.int32, device=frames.device)
    C.frame_drop_score(dl(frames), dl(prev), dl(scores), method, stream)
    C.frame_drop_decide(dl(scores), dl(keep_mask), dl(counts), method, mode, threshold, stream)
    return keep_mask, counts


@_keep_mask_op.register_fake
def _(frames, prev, threshold, method, mode):
    steps, tokens = frames.shape[:2]
    return (
        frames.new_empty((steps, tokens), dtype=torch.bool),
        frames.new_empty((steps,), dtype=torch.int32),
    )


def _compact(frames, keep_mask, kept, kept_index, counts, total) -> None:
    offsets = torch.empty(frames.shape[0], dtype=torch.int64, device=frames.device)
    C.frame_drop_compact(
        dl(frames),
        dl(keep_mask),
        dl(counts),
        dl(offsets),
        dl(kept),
        dl(kept_index),
        dl(total),
        stream_of(frames),
    )


@writes_into("compact_tokens_into", ("kept", "kept_index", "counts", "total"))
def _compact_into_op(
    frames: Tensor,
    keep_mask: Tensor,
    kept: Tensor,
    kept_index: Tensor,
    counts: Tensor,
    total: Tensor,
) -> None:
    _compact(frames, keep_mask, kept, kept_index, counts, total)


@torch.library.custom_op("vidllm::compact_tokens", mutates_args=())
def _compact_op(frames: Tensor, keep_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    device = frames.device
    counts = torch.empty(frames.shape[0], dtype=torch.int32, device=device)
    C.frame_drop_count(dl(keep_mask), dl(counts), stream_of(frames))
    kept_total = int(counts.sum())  # the one host synchronization of the convenience form
    kept = torch.empty((kept_total, frames.shape[2]), dtype=frames.dtype, device=device)
    kept_index = torch.empty(kept_total, dtype=torch.int64, device=device)
    total = torch.empty(1, dtype=torch.int64, device=device)
    _compact(frames, keep_mask, kept, kept_index, counts, total)
    return kept, kept_index, counts


@_compact_op.register_fake
def _(frames, keep_mask):
    kept_total = torch.library.get_ctx().new_dynamic_size()
    return (
        frames.new_empty((kept_total, frames.shape[2])),
        frames.new_empty((kept_total,), dtype=torch.int64),
        frames.new_empty((frames.shape[0],), dtype=torch.int32),
    )


# ---- public API ----------------------------------------------------------------------------


def dtd_scores(frames: Tensor, *, method: str = "feature", prev: Optional[Tensor] = None) -> Tensor:
    """Redundancy score of every token against the same position one step earlier.

    Args:
        frames: ``[steps, tokens, dim]`` float32/float16/bfloat16, CPU or CUDA. Any strides; a
            last dimension with stride != 1 is copied first.
        method: ``"feature"``: cosine similarity ``dot(a, b) / sqrt(max(|a|^2, 1e-16) *
            max(|b|^2, 1e-16))`` from float32 sums (torch.cosine_similarity with eps 1e-8 up to
            rounding; identical tokens score exactly 1; NaN when a squared norm is not finite);
            ``"pixel"``: mean absolute difference over ``dim`` (frames hold pixel patches).
        prev: optional ``[tokens, dim]``, the step just before ``frames[0]``.

    Returns:
        float32 ``[steps, tokens]``; step 0 is NaN when ``prev`` is None. Accumulation is float32.

    Example:
        >>> frames = torch.randn(8, 256, 1280)
        >>> vidllm_ext.ops.dtd_scores(frames).shape
        torch.Size([8, 256])
    """
    frames = check.check_frames(frames)
    method = check.check_choice(method, check.DTD_METHODS, "method")
    prev = check.check_prev(prev, frames)
    return _scores_op(rows_contiguous(frames), _maybe(prev), method)


def dtd_keep_mask(
    frames: Tensor,
    threshold: float,
    *,
    method: str = "feature",
    mode: str = "absolute",
    prev: Optional[Tensor] = None,
) -> Tensor:
    """bool ``[steps, tokens]``, True where a token is kept.

    ``mode="absolute"``: drop iff the float32 score passes ``threshold`` (cosine > threshold for
    ``feature``, threshold in [-1, 1]; mean |difference| < threshold for ``pixel``, threshold >= 0).
    ``mode="relative"``: ``threshold`` in [0, 1] is a fraction; every compared step drops its
    ``floor(tokens * threshold)`` most redundant tokens, ties dropping the lower index first.
    NaN scores never drop a token; step 0 without ``prev`` is kept whole.

    Example:
        >>> keep = vidllm_ext.ops.dtd_keep_mask(frames, 0.9)          # cosine > 0.9 dropped
        >>> keep = vidllm_ext.ops.dtd_keep_mask(frames, 0.8, mode="relative")  # 80% per step
    """
    frames, threshold, method, mode, prev = check.check_dtd_args(
        frames, threshold, method, mode, prev
    )
    return _keep_mask_op(rows_contiguous(frames), _maybe(prev), threshold, method, mode)[0]


def compact_tokens(frames: Tensor, keep_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gathers the kept tokens.

    Returns:
        ``(kept [K, dim], kept_index int64 [K], counts int32 [steps])``: kept rows in ascending
        flat index ``step * tokens + token``. The output size depends on the data, so on CUDA this
        synchronizes the host once; use :func:`compact_tokens_into` inside CUDA graphs.

    Example:
        >>> kept, kept_index, counts = vidllm_ext.ops.compact_tokens(frames, keep)
    """
    frames = check.check_frames(frames)
    keep_mask = check.check_keep_mask(keep_mask, frames)
    return _compact_op(rows_contiguous(frames), keep_mask.contiguous())


def compact_tokens_into(
    frames: Tensor,
    keep_mask: Tensor,
    kept: Tensor,
    kept_index: Tensor,
    counts: Optional[Tensor] = None,
    total: Optional[Tensor] = None,
) -> Tensor:
    """Fixed-capacity :func:`compact_tokens`: no host synchronization, safe in CUDA graphs.

    Args:
        kept: ``[capacity, dim]`` of frames' dtype; receives the first ``min(K, capacity)`` rows.
        kept_index: int64 ``[capacity]``; entries past the kept count are left untouched.
        counts: optional int32 ``[steps]`` output, kept tokens per step.
        total: optional int64 ``[1]`` output.

    Returns:
        ``total``: int64 ``[1]`` on frames' device holding K, the full kept count (it may exceed
        capacity: then only the first capacity rows were written).

    Example:
        >>> kept = torch.empty(4096, 1280); index = torch.empty(4096, dtype=torch.int64)
        >>> total = vidllm_ext.ops.compact_tokens_into(frames, keep, kept, index)
    """
    frames = check.check_frames(frames)
    keep_mask = check.check_keep_mask(keep_mask, frames)
    check.check_compact_outputs(frames, kept, kept_index, counts, total)
    device = frames.device
    if counts is None:
        counts = torch.empty(frames.shape[0], dtype=torch.int32, device=device)
    if total is None:
        total = torch.empty(1, dtype=torch.int64, device=device)
    _compact_into_op(
        rows_contiguous(frames), keep_mask.contiguous(), kept, kept_index, counts, total
    )
    return total


def drop_redundant_tokens(
    frames: Tensor,
    threshold: float,
    *,
    method: str = "feature",
    mode: str = "absolute",
    prev: Optional[Tensor] = None,
) -> DTDResult:
    """:func:`dtd_keep_mask` then :func:`compact_tokens` (one host synchronization on CUDA).

    Returns:
        :class:`~vidllm_ext.contracts.frame_drop.DTDResult` ``(kept, kept_index, keep_mask,
        counts)`` with a
        ``drop_ratio`` per step.

    Example:
        >>> result = vidllm_ext.ops.drop_redundant_tokens(frames, 0.9)
        >>> result.kept.shape, result.drop_ratio.mean()
    """
    frames, threshold, method, mode, prev = check.check_dtd_args(
        frames, threshold, method, mode, prev
    )
    frames = rows_contiguous(frames)
    keep_mask, _ = _keep_mask_op(frames, _maybe(prev), threshold, method, mode)
    kept, kept_index, counts = _compact_op(frames, keep_mask)
    return DTDResult(kept, kept_index, keep_mask, counts)


def _maybe(prev: Optional[Tensor]) -> Optional[Tensor]:
    return None if prev is None else rows_contiguous(prev)
