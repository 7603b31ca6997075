"""Token-merging benchmark: every stage of the first round and the whole hierarchical merge, with
the bytes and FLOPs each must move and do, and the targets.

The stage cases call the compiled kernels directly on preallocated buffers (each stage's inputs
are the previous stage's outputs); the reference is :mod:`vidllm_ext.reference.token_merge`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from vidllm_ext import ops, reference
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Baseline, Measured
from vidllm_ext.bench.shapes import (
    MergeShape,
    dtype_label,
    dtype_size,
    video_steps,
)
from vidllm_ext.bench.tables import text_columns
from vidllm_ext.contracts.token_merge import MergePlan, frame_segment_offsets
from vidllm_ext.ops._backend import C, dl, stream_of
from vidllm_ext.reference.token_merge import (
    best_partner,
    chunk_mean_metric,
    cosine_similarity_matrix,
    merge_schedule,
    plan_from_merges,
    rank_order,
)

CPU_SPEEDUP_TARGET = 1.5  # CPU hierarchical merge vs the reference
GPU_SPEEDUP_TARGET = 3.0  # GPU hierarchical merge vs the reference
END_TO_END = "hierarchical_merge"


@dataclass(frozen=True)
class Cost:
    """What a call must do at least: bytes read plus written, and FLOPs (a multiply-add is 2)."""

    bytes: int
    flops: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


def metric_cost(tokens: int, dim: int, chunks: int, element: int) -> Cost:
    """Features read once, float32 metric written; one add per feature element."""
    return Cost(tokens * dim * element + tokens * (dim // chunks) * 4, tokens * dim)


def match_cost(row_tokens: list[int], channels: int) -> Cost:
    """Metric read once, partner (int64) and score (float32) written; a multiply-add per channel
    of every (A, B) pair. Norms and divisions are left out (a few per pair)."""
    pairs = sum(((t + 1) // 2) * (t // 2) for t in row_tokens)
    a_tokens = sum((t + 1) // 2 for t in row_tokens)
    return Cost(sum(row_tokens) * channels * 4 + a_tokens * 12, 2 * pairs * channels)


def plan_cost(row_tokens: list[int], row_merges: list[int]) -> Cost:
    """Scores and partners read; slots, kept tokens, offsets and source lists written (int64)."""
    a_tokens = sum((t + 1) // 2 for t in row_tokens)
    outputs = sum(t - r for t, r in zip(row_tokens, row_merges))
    return Cost(a_tokens * 12 + sum(row_tokens) * 8 + outputs * 16 + sum(row_merges) * 8, 0)


def merge_cost(row_tokens: list[int], row_merges: list[int], dim: int, element: int) -> Cost:
    """Every input row read once and every output row written, with sizes and indices; per input
    element a multiply and an add (copies of untouched tokens counted alike, an upper bound)."""
    tokens = sum(row_tokens)
    outputs = sum(t - r for t, r in zip(row_tokens, row_merges))
    return Cost((tokens + outputs) * (dim * element + 12), 2 * tokens * dim + outputs * dim)


def segment_lengths(shape: MergeShape) -> list[int]:
    offsets = frame_segment_offsets(shape.frames, shape.tokens, shape.frames_per_segment)
    return [end - first for first, end in zip(offsets, offsets[1:])]


def rounds_of(shape: MergeShape) -> list[tuple[list[int], list[int]]]:
    """``(tokens per segment, merges per segment)`` of every round of the hierarchical merge."""
    lengths = segment_lengths(shape)
    schedules = [merge_schedule(length, shape.tokens_per_segment) for length in lengths]
    rounds = []
    for index in range(max(map(len, schedules), default=0)):
        merges = [s[index] if index < len(s) else 0 for s in schedules]
        rounds.append((list(lengths), merges))
        lengths = [length - r for length, r in zip(lengths, merges)]
    return rounds


def end_to_end_cost(shape: MergeShape) -> Cost:
    """The four stages of every round."""
    element = dtype_size(shape.dtype)
    total = Cost(0, 0)
    for tokens, merges in rounds_of(shape):
        total += metric_cost(sum(tokens), shape.dim, shape.metric_chunks, element)
        total += match_cost(tokens, shape.dim // shape.metric_chunks)
        total += plan_cost(tokens, merges) + merge_cost(tokens, merges, shape.dim, element)
    return total


def video_tokens(shape: MergeShape, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    """Video-like ``[frames, tokens, dim]`` (:func:`~vidllm_ext.bench.shapes.video_steps`).

    Example:
        >>> video_tokens(TOKEN_MERGE_SHAPES["tiny"], "cpu").shape
        torch.Size([4, 32, 64])
    """
    return video_steps(shape.frames, shape.tokens, shape.dim, shape.dtype, device=device, seed=seed)


@dataclass(frozen=True)
class StageCase:
    """A timed call: the op, the reference with its arguments (for torch.compile) and the cost."""

    stage: str
    cost: Cost
    op: Callable[[], object]
    reference: Callable[..., object]
    reference_args: tuple


def reference_match(metric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's matching: the similarity matrix, then each A token's best B token."""
    return best_partner(cosine_similarity_matrix(metric[:, 0::2], metric[:, 1::2]))


def reference_plan(partner: torch.Tensor, score: torch.Tensor, tokens: int, r: int) -> MergePlan:
    """The reference's plan from given partners and scores: top-r, slots, CSR."""
    merged = torch.zeros_like(score, dtype=torch.bool).scatter(1, rank_order(score)[:, :r], True)
    return plan_from_merges(partner, score, merged, tokens, 0, r)


def first_round_cases(shape: MergeShape, tokens: torch.Tensor) -> list[StageCase]:
    """The four stages of round 1 over the full segments, each kernel on preallocated buffers."""
    lengths = segment_lengths(shape)
    length = lengths[0] if lengths else 0
    rows = sum(1 for n in lengths if n == length)  # the full segments (the last may be shorter)
    dim, chunks = shape.dim, shape.metric_chunks
    x = tokens.reshape(-1, dim)[: rows * length].view(rows, length, dim)
    r = merge_schedule(length, shape.tokens_per_segment)[0]
    device, stream, long = x.device, stream_of(x), dict(dtype=torch.int64, device=x.device)
    metric = torch.empty((rows, length, dim // chunks), device=device)
    a_size = (length + 1) // 2
    partner, score = torch.empty((rows, a_size), **long), torch.empty((rows, a_size), device=device)
    slot = torch.empty((rows, length), **long)
    kept, cursor = torch.empty((rows, length - r), **long), torch.empty((rows, length - r), **long)
    offsets, sources = torch.empty((rows, length - r + 1), **long), torch.empty((rows, r), **long)
    out, size_out = (
        x.new_empty((rows, length - r, dim)),
        torch.empty((rows, length - r), device=device),
    )
    plan_buffers = [score, partner, slot, kept, offsets, sources, cursor]

    def op_metric():
        C.token_merge_metric(dl(x), dl(metric), rows, length, length, chunks, stream)

    def op_match():
        C.token_merge_match(dl(metric), dl(partner), dl(score), length, 0, stream)

    def op_plan():
        C.token_merge_plan(*map(dl, plan_buffers), length, 0, r, r, stream)

    def op_merge():
        merge_plan = [dl(kept), dl(offsets), dl(sources)]
        outputs = [dl(out), dl(size_out), None]
        C.token_merge_wavg(dl(x), None, None, *merge_plan, *outputs, length, length, r, stream)

    for fill in (op_metric, op_match, op_plan):  # each stage's inputs are the previous outputs
        fill()
    plan = MergePlan(slot, kept, offsets, sources, partner, score, r, 0)
    element, lengths, merges = dtype_size(shape.dtype), [length] * rows, [r] * rows
    where = f"round 1, {rows}x{length}"
    return [
        StageCase(f"metric ({where})", metric_cost(rows * length, dim, chunks, element),
                  op_metric, chunk_mean_metric, (x, chunks)),
        StageCase(f"match ({where})", match_cost(lengths, dim // chunks), op_match,
                  reference_match, (metric,)),
        StageCase(f"plan ({where}, r {r})", plan_cost(lengths, merges), op_plan,
                  reference_plan, (partner, score, length, r)),
        StageCase(f"merge ({where}, r {r})", merge_cost(lengths, merges, dim, element),
                  op_merge, reference.merge_wavg, (plan, x)),
    ]  # fmt: skip


def end_to_end_case(shape: MergeShape, tokens: torch.Tensor) -> StageCase:
    """The whole hierarchical merge, op and reference."""
    kwargs = dict(
        frames_per_segment=shape.frames_per_segment,
        tokens_per_segment=shape.tokens_per_segment,
        metric_chunks=shape.metric_chunks,
    )

    def reference_merge(tokens):
        return reference.hierarchical_merge(tokens, **kwargs)

    return StageCase(
        f"{END_TO_END} ({len(rounds_of(shape))} rounds)",
        end_to_end_cost(shape),
        lambda: ops.hierarchical_merge(tokens, **kwargs),
        reference_merge,
        (tokens,),
    )


def cases(shape: MergeShape, device: torch.device, quick: bool) -> Iterator[harness.Case]:
    """Round 1's four stages, then the whole merge, on one video of ``shape``."""
    tokens = video_tokens(shape, device)
    for stage in [*first_round_cases(shape, tokens), end_to_end_case(shape, tokens)]:
        yield harness.Case(
            cells=(shape.label, dtype_label(shape.dtype), stage.stage),
            op=stage.op,
            baselines=(
                Baseline("ref", lambda stage=stage: stage.reference(*stage.reference_args)),
                harness.compiled_baseline(
                    harness.compiled_call(stage.reference, *stage.reference_args), quick
                ),
            ),
            bytes=stage.cost.bytes,
            flops=stage.cost.flops,
            spec=stage.stage,
        )


def targets(
    device: torch.device, measured: list[Measured], copy_bytes_per_s: float | None
) -> list[str]:
    """The whole merge's speedup over the reference, against this device's target."""
    target = GPU_SPEEDUP_TARGET if device.type == "cuda" else CPU_SPEEDUP_TARGET
    title = f"target {device.type.upper()} {END_TO_END} >= {target:g}x faster than the reference"
    lines = []
    for item in measured:
        if item.spec.startswith(END_TO_END):
            speedup = item.speedup_over("ref")
            value = harness.verdict(speedup, target)
            lines.append(f"{title}, {item.shape.name}: {value}")
    return lines


TITLE = "Token merging benchmark"
COLUMNS = text_columns("shape", "dtype", "stage")
