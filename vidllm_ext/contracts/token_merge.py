"""Token merging's contract: configuration, plan and result types, argument checks and the
output-size arithmetic of hierarchical merging (segment offsets, merged tokens per segment; the
merge schedule itself lives in the kernels, csrc/token_merge/token_merge.h ``merge_round``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from vidllm_ext.contracts import structure as values
from vidllm_ext.contracts.checks import (
    check_device,
    check_float_dtype,
    check_int,
    check_shape,
    check_tensor,
)


@dataclass(frozen=True)
class MergeConfig:
    """Hierarchical token merging inside a video LLM (LongVLM with ToMe's bipartite matching).

    Each video's temporal steps are cut into segments of ``frames_per_segment`` consecutive steps
    (the last may be shorter); the video tokens of a segment (those DTD kept, when DTD is on) are
    merged jointly across space and time, by rounds of bipartite soft matching on their input
    embeddings, down to ``tokens_per_segment`` tokens. A merged token is the size-weighted mean of
    the tokens it stands for and takes the position ids of its representative (the destination
    that survived every round).

    Args:
        frames_per_segment: temporal steps per segment (Qwen-VL: a step is two frames).
        tokens_per_segment: tokens a segment keeps (a segment holding fewer keeps them all).
        metric_chunks: the matching metric is the embeddings averaged over this many equal
            channel chunks (LongVLM uses 16); it must divide the language model's hidden size.

    Example:
        >>> vidllm_ext.patch(model, merge=vidllm_ext.MergeConfig(tokens_per_segment=64))
    """

    frames_per_segment: int = 10
    tokens_per_segment: int = 30
    metric_chunks: int = 16

    def __post_init__(self) -> None:
        for name in ("frames_per_segment", "tokens_per_segment", "metric_chunks"):
            check_int(getattr(self, name), name, 1)


class MergePlan(NamedTuple):
    """How bipartite soft matching merges ``[B, T, ·]`` tokens into ``[B, T - r, ·]``.

    Tokens after the ``protected`` ones alternate between set A (even offsets) and set B (odd
    offsets); the ``r`` A tokens most similar to their partners merge into them. Outputs keep the
    surviving tokens (protected, unmerged A, all of B) in ascending original order. Every tensor
    lives on the metric's device.

    Attributes:
        slot: int64 ``[B, T]``, the output slot every input token ended in (a merged A token:
            its destination's slot).
        kept_index: int64 ``[B, T - r]``, the input token each output slot keeps (ascending).
        source_offsets: int64 ``[B, T - r + 1]``, CSR offsets: output slot ``s`` received the A
            tokens ``source_index[b, source_offsets[b, s]:source_offsets[b, s + 1]]``.
        source_index: int64 ``[B, r]``, the merged A tokens grouped by destination slot,
            ascending within a group.
        partner: int64 ``[B, |A|]``, each A token's most similar B token (an index into set B:
            B token ``j`` is token ``protected + 2 j + 1``); -1 when B is empty.
        score: float32 ``[B, |A|]``, that cosine similarity (NaN when B is empty).
        r: merges per row, after capping at ``floor((T - protected) / 2)``.
        protected: leading tokens that took no part.
    """

    slot: Tensor
    kept_index: Tensor
    source_offsets: Tensor
    source_index: Tensor
    partner: Tensor
    score: Tensor
    r: int
    protected: int

    @property
    def tokens(self) -> int:
        """T, the input tokens per row."""
        return self.slot.shape[1]

    @property
    def merged_tokens(self) -> int:
        """T - r, the output tokens per row."""
        return self.kept_index.shape[1]


class MergeResult(NamedTuple):
    """Outcome of :func:`~vidllm_ext.ops.hierarchical_merge` over ``tokens [F, N, D]`` (or
    ``[T, D]`` with segment offsets).

    Attributes:
        tokens: ``[K, D]`` merged features in segment order, tokens' dtype; ``K`` is
            ``min(n_s, M)`` summed over the segments, ``M = tokens_per_segment``.
        sizes: float32 ``[K]``, how many input tokens each merged token stands for.
        source_index: int64 ``[K]``, the flat index (``f * N + n``, or the row of ``[T, D]``) of
            each merged token's representative (the destination that survived every round):
            take its position ids.
        segment: int64 ``[K]``, the segment of each merged token (frames
            ``[s * frames_per_segment, (s + 1) * frames_per_segment)``, or tokens
            ``[segment_offsets[s], segment_offsets[s + 1])``).
    """

    tokens: Tensor
    sizes: Tensor
    source_index: Tensor
    segment: Tensor


# --- from vidllm_ext/_merge_validation.py
# Token counts index 32-bit lanes and rank keys in the kernels.
MAX_TOKENS = 2**31 - 1


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
    """A MergePlan whose tensors agree with each other (see :mod:`vidllm_ext.contracts.structure`
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
        check_shape(tensor, f"plan.{name}", shape, f"plan.slot is {[batch, tokens]}, plan.r = {r}")
        check_device(tensor, f"plan.{name}", slot.device)
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
    check_shape(size, "size", expected, "[batch, tokens] of x")
    check_device(size, "size", x.device, "x")
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
    check_device(tensor, name, plan.slot.device, "the plan")


def check_hierarchical_args(
    tokens: object,
    frames_per_segment: object,
    tokens_per_segment: object,
    metric_chunks: object,
    segment_offsets: object = None,
) -> tuple[Tensor, list[int], int, int]:
    """``(flat tokens [T, D], segment offsets, tokens_per_segment, metric_chunks)``: tokens float
    ``[F, N, D]`` cut by ``frames_per_segment`` (default 10), or ``[T, D]`` cut by
    ``segment_offsets``; positive ints; metric_chunks divides D."""
    tokens_per_segment = check_int(tokens_per_segment, "tokens_per_segment", 1)
    metric_chunks = check_int(metric_chunks, "metric_chunks", 1)
    if segment_offsets is None:
        tokens = check_features(tokens, "tokens", "[frames, tokens per frame, dim]")
        frames_per_segment = check_int(
            10 if frames_per_segment is None else frames_per_segment, "frames_per_segment", 1
        )
        frames, per_frame, dim = tokens.shape
        if min(frames_per_segment, frames) * per_frame > MAX_TOKENS:
            raise ValueError("tokens: a segment may hold at most 2^31 - 1 tokens")
        offsets = frame_segment_offsets(frames, per_frame, frames_per_segment)
        flat = tokens.reshape(frames * per_frame, dim)
    else:
        if frames_per_segment is not None:
            raise ValueError(
                "frames_per_segment: not used with segment_offsets (the offsets cut the segments)"
            )
        flat = check_tensor(tokens, "tokens")
        if flat.dim() != 2:
            raise ValueError(
                f"tokens: expected a 2-D tensor [total tokens, dim] with segment_offsets, "
                f"got shape {list(flat.shape)}"
            )
        check_float_dtype(flat, "tokens")
        if flat.shape[1] < 1:
            raise ValueError(
                f"tokens: expected a non-empty feature dimension, got shape {list(flat.shape)}"
            )
        offsets = check_merge_segment_offsets(segment_offsets, flat.shape[0])
    dim = flat.shape[1]
    if dim % metric_chunks != 0:
        raise ValueError(
            f"metric_chunks: expected a divisor of the feature dimension {dim}, got {metric_chunks}"
        )
    return flat, offsets, tokens_per_segment, metric_chunks


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


def frame_segment_offsets(frames: int, tokens_per_frame: int, frames_per_segment: int) -> list[int]:
    """Segment offsets of ``frames`` frames of ``tokens_per_frame`` tokens cut into segments of
    ``frames_per_segment`` consecutive frames (the last may be shorter).

    Example:
        >>> frame_segment_offsets(25, 256, 10)
        [0, 2560, 5120, 6400]
    """
    count = -(-frames // frames_per_segment)
    span = frames_per_segment * tokens_per_frame
    return [min(s * span, frames * tokens_per_frame) for s in range(count + 1)]


def merged_offsets(segment_offsets: list[int], tokens_per_segment: int) -> list[int]:
    """Where each segment's merged tokens start: prefix sums of ``min(n_s, tokens_per_segment)``
    (a segment holding fewer keeps them all); the last entry is the output size K.

    Example:
        >>> merged_offsets([0, 2560, 5120, 6400], 30)
        [0, 30, 60, 90]
    """
    starts = [0]
    for first, end in zip(segment_offsets, segment_offsets[1:]):
        starts.append(starts[-1] + min(end - first, tokens_per_segment))
    return starts


def check_merge_segment_offsets(offsets: object, total: int) -> list[int]:
    """segment_offsets of hierarchical_merge as Python ints: a CPU int64 tensor ``[S + 1]`` or a
    sequence of ints, from 0 to ``total``, never decreasing. A CUDA tensor is refused: the output
    size is computed from the offsets on the host, and reading them would synchronize."""
    name = "segment_offsets"
    if isinstance(offsets, torch.Tensor):
        if offsets.device.type != "cpu":
            raise ValueError(
                f"{name}: expected a CPU tensor or a sequence of ints (the output size is computed "
                f"on the host), got a tensor on {offsets.device}; pass {name}.cpu() (one sync)"
            )
        if offsets.dtype != torch.int64:
            raise TypeError(f"{name}: expected an int64 tensor, got {offsets.dtype}")
        if offsets.dim() != 1:
            raise ValueError(
                f"{name}: expected a 1-D tensor [segments + 1], got shape {list(offsets.shape)}"
            )
        values_list = offsets.tolist()
    elif isinstance(offsets, (list, tuple)):
        for value in offsets:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected ints, got {type(value).__name__} {value!r}")
        values_list = list(offsets)
    else:
        raise TypeError(
            f"{name}: expected a CPU int64 tensor or a sequence of ints, "
            f"got {type(offsets).__name__}"
        )
    if not values_list:
        raise ValueError(f"{name}: expected [segments + 1] offsets starting with 0, got none")
    if values_list[0] != 0 or values_list[-1] != total:
        raise ValueError(
            f"{name}: expected offsets from 0 to the {total} tokens, "
            f"got {values_list[0]} .. {values_list[-1]}"
        )
    for s, (first, end) in enumerate(zip(values_list, values_list[1:])):
        if end < first:
            raise ValueError(
                f"{name}: expected non-decreasing offsets, got {end} after {first} (segment {s})"
            )
        if end - first > MAX_TOKENS:
            raise ValueError(f"{name}: a segment may hold at most 2^31 - 1 tokens, segment {s}")
    return values_list


def set_sizes(tokens: int, protected: int) -> tuple[int, int]:
    """``(|A|, |B|)``: after the protected tokens, A holds the even offsets and B the odd ones."""
    open_tokens = max(tokens - protected, 0)
    return (open_tokens + 1) // 2, open_tokens // 2
