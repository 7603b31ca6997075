"""Token-merging benchmark: every stage of the first round and the whole hierarchical merge, each
next to the PyTorch reference and torch.compile(reference), with the bytes and FLOPs it must
move and do.

Run from the repository root:
``python benchmarks/token_merge_suite.py [--device cpu|cuda] [--shapes NAMES...] [--quick]
[--markdown PATH]``. The table goes to stdout, one progress line per case to stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from shapes import DEFAULT_MERGE_SHAPES, MERGE_SHAPES, MergeShape, dtype_label, dtype_size

from vidllm_ext import ops, reference
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Budget, Column
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


def video_tokens(shape: MergeShape, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Video-like ``[frames, tokens, dim]``: a standard-normal base per position plus per-frame
    noise at a per-position log-uniform scale in [0.05, 1] (static and moving regions)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    base = torch.randn((shape.tokens, shape.dim), generator=generator, device=device)
    scale = torch.empty((shape.tokens, 1), device=device)
    scale.uniform_(math.log(0.05), 0.0, generator=generator).exp_()
    tokens = torch.empty((shape.frames, shape.tokens, shape.dim), dtype=shape.dtype, device=device)
    for frame in tokens:  # one frame at a time: float32 temporaries stay small
        noise = torch.randn((shape.tokens, shape.dim), generator=generator, device=device)
        frame.copy_(noise.mul_(scale).add_(base))
    return tokens


@dataclass(frozen=True)
class Case:
    """A timed call: the op, the reference (with its arguments, for torch.compile) and the cost."""

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


def first_round_cases(shape: MergeShape, tokens: torch.Tensor) -> list[Case]:
    """The four stages of round 1 over the full segments, each kernel on preallocated buffers."""
    lengths = segment_lengths(shape)
    length, dim, chunks = lengths[0], shape.dim, shape.metric_chunks
    rows = lengths.count(length)  # the full segments
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
        Case(f"metric ({where})", metric_cost(rows * length, dim, chunks, element), op_metric,
             chunk_mean_metric, (x, chunks)),
        Case(f"match ({where})", match_cost(lengths, dim // chunks), op_match,
             reference_match, (metric,)),
        Case(f"plan ({where}, r {r})", plan_cost(lengths, merges), op_plan,
             reference_plan, (partner, score, length, r)),
        Case(f"merge ({where}, r {r})", merge_cost(lengths, merges, dim, element), op_merge,
             reference.merge_wavg, (plan, x)),
    ]  # fmt: skip


def end_to_end_case(shape: MergeShape, tokens: torch.Tensor) -> Case:
    kwargs = dict(
        frames_per_segment=shape.frames_per_segment,
        tokens_per_segment=shape.tokens_per_segment,
        metric_chunks=shape.metric_chunks,
    )

    def reference_merge(tokens):
        return reference.hierarchical_merge(tokens, **kwargs)

    rounds = len(rounds_of(shape))
    return Case(
        f"{END_TO_END} ({rounds} rounds)",
        end_to_end_cost(shape),
        lambda: ops.hierarchical_merge(tokens, **kwargs),
        reference_merge,
        (tokens,),
    )


@dataclass(frozen=True)
class Measured:
    """Median seconds of the op, the reference and torch.compile(reference) (or why not)."""

    shape: MergeShape
    case: Case
    op_s: float
    reference_s: float
    compiled_s: float | str


def measure(shape: MergeShape, case: Case, device: torch.device, budget: Budget, compile_ref: bool):
    calls = [case.op, lambda: case.reference(*case.reference_args)]
    compiled: Callable[[], object] | str = "torch.compile(reference) skipped with --quick"
    if compile_ref:
        compiled = _compiled(case)
    if callable(compiled):
        calls.append(compiled)
    times = harness.time_callables(calls, device, budget)
    return Measured(shape, case, times[0], times[1], times[2] if callable(compiled) else compiled)


def _compiled(case: Case) -> Callable[[], object] | str:
    # Compiled on its first call, so timing excludes compilation; a failure becomes its reason.
    torch.compiler.reset()
    function = torch.compile(case.reference)
    try:
        function(*case.reference_args)
    except Exception as exc:
        return "torch.compile(reference) failed: " + harness.compile_failure(exc)
    return lambda: function(*case.reference_args)


def run(device: torch.device, shapes: list[MergeShape], quick: bool) -> list[str]:
    """Measures every case on every shape; returns the report as markdown lines and prints it."""
    budget = harness.QUICK if quick else harness.FULL
    copy = harness.copy_bandwidth(device, budget) if device.type == "cuda" else None
    load_at_start = os.getloadavg()[0]
    measured = []
    for shape in shapes:
        tokens = video_tokens(shape, device)
        cases = [*first_round_cases(shape, tokens), end_to_end_case(shape, tokens)]
        for number, case in enumerate(cases, start=1):
            print(f"[{shape.name} {number}/{len(cases)}] {case.stage}", file=sys.stderr, flush=True)
            measured.append(measure(shape, case, device, budget, not quick))
    load = f"{load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    return report(device, budget, shapes, measured, copy, load)


def report(
    device, budget, shapes, measured: list[Measured], copy: float | None, load: str
) -> list[str]:
    notes: list[str] = []
    columns = [
        Column("case", numeric=False), Column("shape", numeric=False),
        Column("dtype", numeric=False), Column("stage", numeric=False), Column("MB"),
        Column("GFLOP"), Column("op ms"), Column("GB/s"), Column("GFLOP/s"),
        *([Column("of copy BW")] if copy else []), Column("ref ms"), Column("compiled ms"),
        Column("vs ref"), Column("vs compiled"),
    ]  # fmt: skip
    rows = [_row(item, copy, notes) for item in measured]
    facts = [*harness.run_facts(device, budget, copy)]
    facts.append(("shapes", "; ".join(f"{s.name}: {s.about}" for s in shapes)))
    # A shared machine makes rows measured at different moments hard to compare; say how busy.
    facts.append(("load average (1 min)", f"{load}; {os.cpu_count()} logical CPUs"))
    lines = ["# Token merging benchmark", "", *(f"- **{k}**: {v}" for k, v in facts), ""]
    lines += [harness.markdown_table(columns, rows), ""]
    footnotes = [f"[{n}] {note}" for n, note in enumerate(notes, start=1)]
    lines += [f"- {line}" for line in [*footnotes, *_targets(device, measured)]]
    print("\n".join([*(f"{k}: {v}" for k, v in facts), "", harness.text_table(columns, rows)]))
    print("\n".join([*footnotes, *_targets(device, measured)]))
    return [*lines, ""]


def _row(item: Measured, copy: float | None, notes: list[str]) -> list[str]:
    cost = item.case.cost
    compiled, versus = harness.compiled_cells(item.compiled_s, item.op_s, notes)
    bandwidth = cost.bytes / item.op_s
    return [
        item.shape.name, item.shape.label, dtype_label(item.shape.dtype), item.case.stage,
        f"{cost.bytes / 1e6:.1f}", f"{cost.flops / 1e9:.2f}", harness.format_ms(item.op_s),
        f"{bandwidth / 1e9:.1f}", f"{cost.flops / item.op_s / 1e9:.1f}",
        *([f"{bandwidth / copy:.0%}"] if copy else []),
        harness.format_ms(item.reference_s), compiled,
        f"{item.reference_s / item.op_s:.2f}x", versus,
    ]  # fmt: skip


def _targets(device: torch.device, measured: list[Measured]) -> list[str]:
    target = GPU_SPEEDUP_TARGET if device.type == "cuda" else CPU_SPEEDUP_TARGET
    title = f"target {device.type.upper()} {END_TO_END} >= {target:g}x faster than the reference"
    lines = []
    for item in measured:
        if item.case.stage.startswith(END_TO_END):
            speedup = item.reference_s / item.op_s
            verdict = "PASS" if speedup >= target else "MISS"
            lines.append(f"{title}, {item.shape.name}: {speedup:.2f}x {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Runs the suite; returns 0, or 2 when the device cannot run the kernels."""
    parser = argparse.ArgumentParser(prog="token_merge_suite", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--shapes", nargs="+", choices=sorted(MERGE_SHAPES), metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="few repeats, no torch.compile")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("token_merge_suite: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    names = args.shapes or DEFAULT_MERGE_SHAPES[device.type]
    lines = run(device, [MERGE_SHAPES[name] for name in names], args.quick)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines))
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
