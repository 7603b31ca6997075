"""Token merging's contract: configuration, plan and result types, argument checks and the
host-side geometry of hierarchical merging (segments and merges per round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from vidllm_ext.contracts import structure as values
from vidllm_ext.contracts.checks import check_float_dtype, check_int, check_tensor


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
    """Outcome of :func:`~vidllm_ext.ops.hierarchical_merge` over ``tokens [F, N, D]``.

    Attributes:
        tokens: ``[K, D]`` merged features in segment order, tokens' dtype; ``K = S * M`` when
            every segment holds at least ``M = tokens_per_segment`` tokens.
        sizes: float32 ``[K]``, how many input tokens each merged token stands for.
        source_index: int64 ``[K]``, the flat index ``f * N + n`` of each merged token's
            representative (the destination that survived every round): take its position ids.
        segment: int64 ``[K]``, the segment of each merged token (frames
            ``[s * frames_per_segment, (s + 1) * frames_per_segment)``).
    """

    tokens: Tensor
    sizes: Tensor
    source_index: Tensor
    segment: Tensor


# ---- argument checks
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


def check_uneven_segments(
    tokens: object,
    segment_offsets: object,
    frames_per_segment: object,
    tokens_per_segment: object,
    metric_chunks: object,
) -> tuple[torch.Tensor, list[int], int, int]:
    """hierarchical_merge with uneven segments: tokens float ``[T, D]``; segment_offsets a CPU
    int64 tensor ``[S + 1]`` or a sequence of ints from 0 to T, not decreasing (segment s is
    ``[o_s, o_{s+1})``, empty segments allowed); frames_per_segment None. The offsets are read on
    the host, so the output size is known without a device synchronization."""
    if frames_per_segment is not None:
        raise ValueError(
            "frames_per_segment: give either frames_per_segment (equal segments of a video "
            "[F, N, D]) or segment_offsets (uneven segments of tokens [T, D]), not both"
        )
    tokens = check_tensor(tokens, "tokens")
    if tokens.dim() != 2:
        raise ValueError(
            f"tokens: expected a 2-D tensor [tokens, dim] with segment_offsets, got shape "
            f"{list(tokens.shape)}"
        )
    tokens = check_features(tokens[None], "tokens", "[tokens, dim]")[0]
    if isinstance(segment_offsets, torch.Tensor):
        if segment_offsets.dtype != torch.int64 or segment_offsets.dim() != 1:
            raise ValueError(
                f"segment_offsets: expected an int64 tensor [segments + 1], got "
                f"{segment_offsets.dtype} of shape {list(segment_offsets.shape)}"
            )
        if segment_offsets.device.type != "cpu":
            raise ValueError(
                "segment_offsets: expected a CPU tensor or a sequence of ints (the output size "
                f"is computed on the host without a device synchronization), got one on "
                f"{segment_offsets.device}"
            )
        offsets = segment_offsets.tolist()
    else:
        try:
            offsets = [check_int(o, "segment_offsets[i]", 0) for o in segment_offsets]
        except TypeError as error:
            raise TypeError(
                f"segment_offsets: expected a CPU int64 tensor or ints: {error}"
            ) from None
    count = tokens.shape[0]
    what = f"segment_offsets: expected offsets from 0 to {count} (the tokens) without decreasing"
    if not offsets or offsets[0] != 0 or offsets[-1] != count:
        raise ValueError(f"{what}, got {offsets[:3]}...{offsets[-2:]}" if offsets else what)
    for s, (first, last) in enumerate(zip(offsets[:-1], offsets[1:])):
        if last < first:
            raise ValueError(f"{what}, got segment_offsets[{s}] = {first} > {last}")
        if last - first > MAX_TOKENS:
            raise ValueError("tokens: a segment may hold at most 2^31 - 1 tokens")
    tokens_per_segment = check_int(tokens_per_segment, "tokens_per_segment", 1)
    metric_chunks = check_int(metric_chunks, "metric_chunks", 1)
    if tokens.shape[1] % metric_chunks != 0:
        raise ValueError(
            f"metric_chunks: expected a divisor of the feature dimension {tokens.shape[1]}, got "
            f"{metric_chunks}"
        )
    return tokens, offsets, tokens_per_segment, metric_chunks


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


# ---- host-side geometry: segments of a video and the tokens merging leaves
class Segments(NamedTuple):
    """Frames ``[F, N]`` cut into segments of ``frames_per_segment`` consecutive frames.

    Attributes:
        count: S, the number of segments (0 for an empty video).
        tokens: tokens of every segment but the last (``frames_per_segment * N``, or ``F * N``
            when there is only one segment).
        last_tokens: tokens of the last segment (``tokens`` unless it has fewer frames).
    """

    count: int
    tokens: int
    last_tokens: int


def video_segments(frames: int, tokens_per_frame: int, frames_per_segment: int) -> Segments:
    """Cuts ``frames`` frames of ``tokens_per_frame`` tokens into segments.

    Example:
        >>> video_segments(25, 256, 10)
        Segments(count=3, tokens=2560, last_tokens=1280)
    """
    if frames == 0:
        return Segments(0, 0, 0)
    count = -(-frames // frames_per_segment)
    full_frames = min(frames, frames_per_segment)
    last_frames = frames - (count - 1) * frames_per_segment
    return Segments(count, full_frames * tokens_per_frame, last_frames * tokens_per_frame)


def merged_token_count(segments: Segments, tokens_per_segment: int) -> int:
    """Tokens left after merging every segment down to ``tokens_per_segment`` (a segment that
    holds fewer keeps them all).

    Example:
        >>> merged_token_count(video_segments(25, 256, 10), 30)
        90
    """
    if segments.count == 0:
        return 0
    full = min(segments.tokens, tokens_per_segment)
    return (segments.count - 1) * full + min(segments.last_tokens, tokens_per_segment)


def set_sizes(tokens: int, protected: int) -> tuple[int, int]:
    """``(|A|, |B|)``: after the protected tokens, A holds the even offsets and B the odd ones."""
    open_tokens = max(tokens - protected, 0)
    return (open_tokens + 1) // 2, open_tokens // 2
