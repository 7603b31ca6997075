"""Argument checks of the token-merging ops and reference, so both raise the same exceptions.

They read only shapes, dtypes, devices and Python values, so they also run on fake tensors while
``torch.compile`` traces. The C++ bindings repeat the checks for callers of ``vidllm_ext._C``.
"""

from __future__ import annotations

import torch

from vidllm_ext import _structure_checks as values
from vidllm_ext._validation import INT64_MAX, check_float_dtype, check_tensor
from vidllm_ext.merge_types import MergePlan

# Token counts index 32-bit lanes and rank keys in the kernels.
MAX_TOKENS = 2**31 - 1


def check_int(value: object, name: str, minimum: int) -> int:
    """A Python int (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if value > INT64_MAX:
        raise ValueError(f"{name}: expected an int <= 2^63 - 1, got {value}")
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
    """A MergePlan whose tensors agree with each other (see :mod:`vidllm_ext._structure_checks`
    for when the O(T) value checks run)."""
    if not isinstance(plan, MergePlan):
        raise TypeError(f"plan: expected a MergePlan, got {type(plan).__name__}")
    slot = values.check_int_tensor(plan.slot, "plan.slot", 2)
    batch, tokens = slot.shape
    r = check_int(plan.r, "plan.r", 0)
    check_int(plan.protected, "plan.protected", 0)
    expected = {
        "kept_index": [batch, tokens - r],
        "source_offsets": [batch, tokens - r + 1],
        "source_index": [batch, r],
    }
    for name, shape in expected.items():
        tensor = values.check_int_tensor(getattr(plan, name), f"plan.{name}", 2)
        if list(tensor.shape) != shape:
            raise ValueError(
                f"plan.{name}: expected shape {shape} (plan.slot is {[batch, tokens]}, "
                f"plan.r = {r}), got {list(tensor.shape)}"
            )
        if tensor.device != slot.device:
            raise ValueError(
                f"plan.{name}: expected a tensor on {slot.device}, got {tensor.device}"
            )
    if values.values_checked(slot):
        _check_plan_values(plan)
    return plan


def _check_plan_values(plan: MergePlan) -> None:
    """Every input token is kept by exactly one slot or merged into exactly one, and plan.slot
    says which: then merging and unmerging read only what the plan names."""
    tokens, outputs, r = plan.tokens, plan.merged_tokens, plan.r
    values.check_range(plan.slot, "plan.slot", 0, outputs)
    values.check_range(plan.kept_index, "plan.kept_index", 0, tokens)
    values.check_range(plan.source_index, "plan.source_index", 0, tokens)
    offsets = plan.source_offsets
    values.check_ascending(plan.kept_index, "plan.kept_index", strict=True)
    values.check_ascending(offsets, "plan.source_offsets", strict=False)
    ends = offsets[:, [0, -1]] - offsets.new_tensor([0, r])
    if values.first_bad(ends != 0) is not None:
        raise ValueError(f"plan.source_offsets: expected rows from 0 to plan.r = {r}")
    seen = torch.zeros_like(plan.slot)
    seen.scatter_add_(1, plan.kept_index, torch.ones_like(plan.kept_index))
    seen.scatter_add_(1, plan.source_index, torch.ones_like(plan.source_index))
    where = values.first_bad(seen != 1)
    if where is not None:
        raise ValueError(
            f"plan: expected every token once in kept_index or source_index, token {where[1]} "
            f"of row {where[0]} appears {int(seen[tuple(where)])} times"
        )
    kept_slot = plan.slot.gather(1, plan.kept_index)
    outputs_range = torch.arange(outputs, device=plan.slot.device).expand_as(kept_slot)
    if values.first_bad(kept_slot != outputs_range) is not None:
        raise ValueError("plan.slot: expected slot[kept_index[s]] == s for every output slot s")
    counts = offsets.diff(dim=1)
    group_of = torch.repeat_interleave(outputs_range.reshape(-1), counts.reshape(-1))
    source_slot = plan.slot.gather(1, plan.source_index).reshape(-1)
    if values.first_bad(source_slot != group_of) is not None:
        raise ValueError(
            "plan.slot: expected each merged token's slot to be the destination whose "
            "source_offsets group lists it"
        )


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


def check_sizes(size: object) -> torch.Tensor:
    """size of proportional_attention_bias: float ``[..., T]`` (at least 1-D); its values must be
    finite and positive (checked where ``_structure_checks.values_checked`` says)."""
    size = check_tensor(size, "size")
    check_float_dtype(size, "size")
    if size.dim() < 1:
        raise ValueError("size: expected a tensor [..., tokens] (at least 1-D), got a 0-D tensor")
    if values.values_checked(size):
        where = values.first_bad(~((size > 0) & size.isfinite()))
        if where is not None:
            raise ValueError(
                f"size: expected finite positive token sizes, got {float(size[tuple(where)])} "
                f"at {where}"
            )
    return size


def check_bias_dtype(dtype: object) -> torch.dtype | None:
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"dtype: expected None, torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}"
        )
    return dtype
