"""Frame-difference token drop benchmark: the cases, their cost model, and a run over shapes.

Each case times a vidllm op, the plain-PyTorch reference and ``torch.compile(reference)`` on the
same video-like inputs (:func:`vidllm_ext.bench.shapes.video_frames`, with ``prev`` given as in a
stream), and reports achieved bandwidth against the bytes the op must move.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vidllm_ext import ops, reference
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Budget, Column
from vidllm_ext.bench.shapes import Shape, dtype_label, dtype_size, video_frames

CPU_SPEEDUP_TARGET = 1.5  # CPU op vs reference at the cpu shape
GPU_COPY_FRACTION_TARGET = 0.8  # GPU feature/absolute path vs the measured copy bandwidth


@dataclass(frozen=True)
class Case:
    """One benchmarked call.

    ``op``: ``"drop"`` (:func:`~vidllm_ext.ops.drop_redundant_tokens`), ``"drop_into"``
    (:func:`~vidllm_ext.ops.dtd_keep_mask` then :func:`~vidllm_ext.ops.compact_tokens_into` at
    full capacity: no host synchronization) or ``"keep_mask"``
    (:func:`~vidllm_ext.ops.dtd_keep_mask`).
    """

    op: str
    method: str
    mode: str
    threshold: float

    @property
    def label(self) -> str:
        """``"method/mode"``, e.g. ``"feature/absolute"``."""
        return f"{self.method}/{self.mode}"


# Thresholds drop 50-80% of the tokens of video_frames' inputs (the run prints the measured ratio).
CASES = (
    Case("drop", "feature", "absolute", 0.9),
    Case("drop", "feature", "relative", 0.7),
    Case("drop", "pixel", "absolute", 0.05),
    Case("drop_into", "feature", "absolute", 0.9),
    Case("keep_mask", "feature", "absolute", 0.9),
)


def bytes_moved(shape: Shape, op: str, kept_tokens: int) -> int:
    """Bytes the op must move: frames and prev read once, float32 scores and the bool mask
    written, then (unless ``op == "keep_mask"``) each kept row read again and written, plus its
    int64 index.

    Example:
        >>> bytes_moved(SHAPES["cpu"], "keep_mask", 0)  # (64 + 1) * 256 * 1024 * 4 + 64 * 256 * 5
        68239360
    """
    row_bytes = shape.dim * dtype_size(shape.dtype)
    positions = shape.steps * shape.tokens
    scored = (positions + shape.tokens) * row_bytes + positions * (4 + 1)
    if op == "keep_mask":
        return scored
    return scored + kept_tokens * (2 * row_bytes + 8)


def flops(shape: Shape, method: str) -> int:
    """FLOPs of scoring: per element 3 multiply-adds for ``feature`` (dot and both squared norms),
    2 for ``pixel`` (difference and absolute sum); a multiply-add is 2 FLOPs.

    Example:
        >>> flops(SHAPES["cpu"], "pixel")  # 4 * 64 * 256 * 1024
        67108864
    """
    multiply_adds = 3 if method == "feature" else 2
    return 2 * multiply_adds * shape.steps * shape.tokens * shape.dim


def op_call(case: Case, frames: torch.Tensor, prev: torch.Tensor) -> Callable[[], object]:
    """The vidllm op of ``case`` with its inputs (and, for ``drop_into``, its outputs) bound.

    Example:
        >>> time_it = op_call(CASES[0], *video_frames(SHAPES["cpu"]))
        >>> result = time_it()
    """
    if case.op == "drop":
        return bind(ops.drop_redundant_tokens, case, frames, prev)
    keep_mask = bind(ops.dtd_keep_mask, case, frames, prev)
    if case.op == "keep_mask":
        return keep_mask
    capacity = frames.shape[0] * frames.shape[1]
    kept = frames.new_empty((capacity, frames.shape[2]))
    kept_index = torch.empty(capacity, dtype=torch.int64, device=frames.device)
    counts = torch.empty(frames.shape[0], dtype=torch.int32, device=frames.device)
    total = torch.empty(1, dtype=torch.int64, device=frames.device)
    return lambda: ops.compact_tokens_into(frames, keep_mask(), kept, kept_index, counts, total)


def reference_fn(case: Case) -> Callable[..., object]:
    """The reference function computing what ``case``'s op computes.

    Example:
        >>> reference_fn(CASES[-1]) is vidllm_ext.reference.dtd_keep_mask
        True
    """
    return reference.dtd_keep_mask if case.op == "keep_mask" else reference.drop_redundant_tokens


def bind(
    fn: Callable[..., object], case: Case, frames: torch.Tensor, prev: torch.Tensor
) -> Callable[[], object]:
    """``fn(frames, threshold, method=, mode=, prev=)`` with ``case``'s arguments, as a thunk.

    Example:
        >>> keep = bind(vidllm_ext.ops.dtd_keep_mask, CASES[0], frames, prev)()
    """
    return lambda: fn(frames, case.threshold, method=case.method, mode=case.mode, prev=prev)


@dataclass(frozen=True)
class Measured:
    """What one case measured; times are medians in seconds. ``compiled_s`` is a string saying
    why it is not available when ``torch.compile(reference)`` was not timed."""

    shape: Shape
    case: Case
    drop_ratio: float
    bytes: int
    flops: int
    op_s: float
    reference_s: float
    compiled_s: float | str

    @property
    def bytes_per_s(self) -> float:
        """Achieved bandwidth on the cost model's bytes."""
        return self.bytes / self.op_s


def measure_case(
    shape: Shape,
    case: Case,
    inputs: tuple[torch.Tensor, torch.Tensor],
    budget: Budget,
    compile_reference: bool,
) -> Measured:
    """Times ``case`` on ``inputs`` (``(frames, prev)`` on one device): op, reference and, when
    ``compile_reference``, ``torch.compile(reference)`` (compiled before timing), in alternation.

    Example:
        >>> shape = SHAPES["cpu"]
        >>> measured = measure_case(shape, CASES[0], video_frames(shape), QUICK, False)
    """
    frames, prev = inputs
    device = frames.device
    keep_mask = bind(ops.dtd_keep_mask, case, frames, prev)()
    _warn_on_mask_mismatch(keep_mask, bind(reference.dtd_keep_mask, case, frames, prev)())
    kept_tokens = int(keep_mask.sum())
    ref = reference_fn(case)
    calls = [op_call(case, frames, prev), bind(ref, case, frames, prev)]
    if compile_reference:
        compiled = _compiled_reference(ref, case, frames, prev)
    else:
        compiled = "torch.compile(reference) skipped with --quick (compiling takes longer)"
    if callable(compiled):
        calls.append(compiled)
    timings = harness.time_callables(calls, device, budget)
    return Measured(
        shape=shape,
        case=case,
        drop_ratio=1.0 - kept_tokens / max(keep_mask.numel(), 1),
        bytes=bytes_moved(shape, case.op, kept_tokens),
        flops=flops(shape, case.method),
        op_s=timings[0],
        reference_s=timings[1],
        compiled_s=timings[2] if callable(compiled) else compiled,
    )


def _warn_on_mask_mismatch(keep_mask: torch.Tensor, expected: torch.Tensor) -> None:
    # A few tokens within float32 rounding of the threshold may differ; more means a broken op.
    differing = int((keep_mask != expected).sum())
    if differing:
        print(
            f"  note: keep mask differs from the reference at {differing} of "
            f"{keep_mask.numel()} tokens",
            file=sys.stderr,
        )


def _compiled_reference(
    ref: Callable[..., object], case: Case, frames: torch.Tensor, prev: torch.Tensor
) -> Callable[[], object] | str:
    # Compiles now (the first call), so timing excludes it; a failure becomes its reason.
    # Fresh caches per case, so earlier cases' graphs cannot push this one past the recompile
    # limit (past it, dynamo silently runs eager code).
    torch.compiler.reset()
    compiled = bind(torch.compile(ref), case, frames, prev)
    try:
        compiled()
    except Exception as exc:
        return "torch.compile(reference) failed: " + harness.compile_failure(exc)
    return compiled


@dataclass(frozen=True)
class Report:
    """A finished run: facts about it, the table, notes and the target verdicts."""

    facts: list[tuple[str, str]]
    columns: list[Column]
    rows: list[list[str]]
    notes: list[str]
    targets: list[str]

    def text(self) -> str:
        """The report as plain text (aligned table)."""
        facts = [f"{name}: {value}" for name, value in self.facts]
        table = harness.text_table(self.columns, self.rows)
        return "\n".join(["DTD benchmark", *facts, "", table, "", *self.notes, *self.targets])

    def markdown(self) -> str:
        """The report as markdown (a results file)."""
        facts = [f"- **{name}**: {value}" for name, value in self.facts]
        table = harness.markdown_table(self.columns, self.rows)
        notes = [f"- {line}" for line in [*self.notes, *self.targets]]
        return "\n".join(
            ["# Frame-difference token drop benchmark", "", *facts, "", table, "", *notes, ""]
        )


def run(device: torch.device, shapes: list[Shape], quick: bool) -> Report:
    """Measures every case on every shape on ``device`` and builds the report.

    Args:
        device: ``cpu`` or ``cuda`` (CUDA must be usable; the caller checks).
        shapes: the shapes to run, in order.
        quick: few repeats and no ``torch.compile(reference)`` (for tests and CI).

    Example:
        >>> print(run(torch.device("cpu"), [SHAPES["cpu"]], quick=True).text())
    """
    budget = harness.QUICK if quick else harness.FULL
    copy_bytes_per_s = harness.copy_bandwidth(device, budget) if device.type == "cuda" else None
    measured = []
    for shape_number, shape in enumerate(shapes):
        inputs = {}
        for case_number, case in enumerate(CASES):
            index = shape_number * len(CASES) + case_number + 1
            _progress(index, len(shapes) * len(CASES), shape, case)
            kind = case.method  # feature inputs for feature cases, pixel patches for pixel ones
            if kind not in inputs:
                inputs[kind] = video_frames(shape, kind=kind, device=device)
            measured.append(measure_case(shape, case, inputs[kind], budget, not quick))
    return _report(device, budget, shapes, measured, copy_bytes_per_s)


def _progress(index: int, total: int, shape: Shape, case: Case) -> None:
    print(
        f"[{index}/{total}] {shape.name} {shape.label} {dtype_label(shape.dtype)} {case.op} "
        f"{case.label} threshold {case.threshold:g}",
        file=sys.stderr,
        flush=True,
    )


def _report(
    device: torch.device,
    budget: Budget,
    shapes: list[Shape],
    measured: list[Measured],
    copy_bytes_per_s: float | None,
) -> Report:
    notes: list[str] = []
    rows = [_row(item, copy_bytes_per_s, notes) for item in measured]
    shape_fact = ("shapes", "; ".join(f"{shape.name}: {shape.about}" for shape in shapes))
    return Report(
        facts=[*harness.run_facts(device, budget, copy_bytes_per_s), shape_fact],
        columns=_columns(copy_bytes_per_s is not None),
        rows=rows,
        notes=[f"[{number}] {note}" for number, note in enumerate(notes, start=1)],
        targets=_targets(device, measured, copy_bytes_per_s),
    )


def _columns(with_copy_fraction: bool) -> list[Column]:
    copy_fraction = [Column("of copy BW")] if with_copy_fraction else []
    return [
        Column("case", numeric=False),
        Column("shape", numeric=False),
        Column("dtype", numeric=False),
        Column("op", numeric=False),
        Column("method/mode", numeric=False),
        Column("threshold"),
        Column("dropped"),
        Column("op ms"),
        Column("GB/s"),
        Column("GFLOP/s"),
        *copy_fraction,
        Column("ref ms"),
        Column("compiled ms"),
        Column("vs ref"),
        Column("vs compiled"),
    ]


def _row(item: Measured, copy_bytes_per_s: float | None, notes: list[str]) -> list[str]:
    op_s = item.op_s
    copy_fraction = (
        [] if copy_bytes_per_s is None else [f"{item.bytes_per_s / copy_bytes_per_s:.0%}"]
    )
    compiled_ms, compiled_speedup = harness.compiled_cells(item.compiled_s, op_s, notes)
    return [
        item.shape.name,
        item.shape.label,
        dtype_label(item.shape.dtype),
        item.case.op,
        item.case.label,
        f"{item.case.threshold:g}",
        f"{item.drop_ratio:.1%}",
        harness.format_ms(op_s),
        f"{item.bytes_per_s / 1e9:.1f}",
        f"{item.flops / op_s / 1e9:.1f}",
        *copy_fraction,
        harness.format_ms(item.reference_s),
        compiled_ms,
        f"{item.reference_s / op_s:.2f}x",
        compiled_speedup,
    ]


def _targets(
    device: torch.device, measured: list[Measured], copy_bytes_per_s: float | None
) -> list[str]:
    return [*_cpu_targets(device, measured), *_gpu_targets(measured, copy_bytes_per_s)]


def _cpu_targets(device: torch.device, measured: list[Measured]) -> list[str]:
    title = f"target CPU op >= {CPU_SPEEDUP_TARGET:g}x faster than the reference (cpu shape)"
    lines = []
    for item in measured:
        if device.type == "cpu" and item.shape.name == "cpu" and item.case.op == "drop":
            speedup = item.reference_s / item.op_s
            lines.append(_verdict(title, item, f"{speedup:.2f}x", speedup >= CPU_SPEEDUP_TARGET))
    return lines or [f"{title}: not measured in this run (needs --device cpu and the cpu shape)"]


def _gpu_targets(measured: list[Measured], copy_bytes_per_s: float | None) -> list[str]:
    title = f"target GPU feature/absolute path >= {GPU_COPY_FRACTION_TARGET:.0%} of copy bandwidth"
    if copy_bytes_per_s is None:
        return [f"{title}: not measured in this run (needs --device cuda)"]
    lines = []
    for item in measured:
        if item.case.label == "feature/absolute" and item.case.op in ("drop", "drop_into"):
            fraction = item.bytes_per_s / copy_bytes_per_s
            passed = fraction >= GPU_COPY_FRACTION_TARGET
            lines.append(_verdict(title, item, f"{fraction:.1%}", passed))
    return lines


def _verdict(title: str, item: Measured, value: str, passed: bool) -> str:
    where = f"{item.shape.name} {item.case.op} {item.case.label}"
    return f"{title}, {where}: {value} {'PASS' if passed else 'MISS'}"
