"""Argument checks of the token-merging ops and reference, so both raise the same exceptions.

They read only shapes, dtypes, devices and Python values, so they also run on fake tensors while
``torch.compile`` traces. The C++ bindings repeat the checks for callers of ``vidllm_ext._C``.
"""

from __future__ import annotations

import torch

from vidllm_ext._validation import check_float_dtype, check_tensor
from vidllm_ext.merge_types import MergePlan

# Token counts index 32-bit lanes and rank keys in the kernels.
MAX_TOKENS = 2**31 - 1


def check_int(value: object, name: str, minimum: int) -> int:
    """A Python int (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_features(tensor: object, name: str, layout: str) -> torch.Tensor:
    """A float tensor ``[·, ·, dim]`` with dim >= 1 and at most MAX_TOKENS in dimension 1."""
    tensor = check_tensor(tensor, name)
    if tensor.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D tensor {layout}, got shape {list(tensor.shape)}")
    check_float_dtype(tensor, name)
    if tensor.shape[2] < 1:
        raise ValueError(
            f"{name}: expected a non-empty feature dimension, got shape {list(tensor.shape)}"
        )
    if tensor.shape[1] > MAX_TOKENS:
        raise ValueError(f"{name}: at most 2^31 - 1 tokens per row, got {list(tensor.shape)}")
    return tensor


def check_matching_args(metric: object, r: object, protected: object):
    """``(metric, r, protected)`` of bipartite_soft_matching: metric float ``[B, T, C]``,
    ``r >= 0``, ``0 <= protected <= T``."""
    metric = check_features(metric, "metric", "[batch, tokens, channels]")
    r = check_int(r, "r", 0)
    protected = check_int(protected, "protected", 0)
    if protected > metric.shape[1]:
        raise ValueError(
            f"protected: expected at most the {metric.shape[1]} tokens of metric, got {protected}"
        )
    return metric, r, protected


def check_plan(plan: object) -> MergePlan:
    if not isinstance(plan, MergePlan):
        raise TypeError(f"plan: expected a MergePlan, got {type(plan).__name__}")
    return plan


def check_merge_input(plan: object, x: object, size: object):
    """``(plan, x, size)`` of merge_wavg: x float ``[B, T, D]`` with the plan's B and T on its
    device; size None or a float ``[B, T]`` on the same device."""
    plan = check_plan(plan)
    x = check_features(x, "x", "[batch, tokens, dim]")
    _check_rows(x, "x", plan.slot.shape[0], plan.tokens, plan)
    if size is None:
        return plan, x, None
    size = check_tensor(size, "size")
    check_float_dtype(size, "size")
    expected = [plan.slot.shape[0], plan.tokens]
    if list(size.shape) != expected:
        raise ValueError(
            f"size: expected shape {expected} ([batch, tokens] of x), got {list(size.shape)}"
        )
    if size.device != x.device:
        raise ValueError(f"size: expected a tensor on {x.device} like x, got {size.device}")
    if size.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "size: gradients with respect to sizes are not supported; pass size.detach()"
        )
    return plan, x, size


def check_unmerge_input(plan: object, x_merged: object):
    """``(plan, x_merged)`` of unmerge: x_merged float ``[B, T - r, D]``."""
    plan = check_plan(plan)
    x_merged = check_features(x_merged, "x_merged", "[batch, tokens - r, dim]")
    _check_rows(x_merged, "x_merged", plan.slot.shape[0], plan.merged_tokens, plan)
    return plan, x_merged


def _check_rows(tensor: torch.Tensor, name: str, batch: int, tokens: int, plan: MergePlan):
    if list(tensor.shape[:2]) != [batch, tokens]:
        raise ValueError(
            f"{name}: expected [batch, tokens] = {[batch, tokens]} as the plan has, "
            f"got shape {list(tensor.shape)}"
        )
    if tensor.device != plan.slot.device:
        raise ValueError(
            f"{name}: expected a tensor on {plan.slot.device} like the plan, got {tensor.device}"
        )


def check_hierarchical_args(
    tokens: object, frames_per_segment: object, tokens_per_segment: object, metric_chunks: object
):
    """tokens float ``[F, N, D]``; positive ints; metric_chunks divides D."""
    tokens = check_features(tokens, "tokens", "[frames, tokens per frame, dim]")
    frames_per_segment = check_int(frames_per_segment, "frames_per_segment", 1)
    tokens_per_segment = check_int(tokens_per_segment, "tokens_per_segment", 1)
    metric_chunks = check_int(metric_chunks, "metric_chunks", 1)
    dim = tokens.shape[2]
    if dim % metric_chunks != 0:
        raise ValueError(
            f"metric_chunks: expected a divisor of the feature dimension {dim}, got {metric_chunks}"
        )
    if min(frames_per_segment, tokens.shape[0]) * tokens.shape[1] > MAX_TOKENS:
        raise ValueError("tokens: a segment may hold at most 2^31 - 1 tokens")
    return tokens, frames_per_segment, tokens_per_segment, metric_chunks
