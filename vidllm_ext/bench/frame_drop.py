"""Frame-difference token drop benchmark: the cases, their cost model and targets.

Each case times a vidllm op against the plain-PyTorch reference and ``torch.compile(reference)``
on the same video-like inputs (:func:`vidllm_ext.bench.shapes.video_frames`, with ``prev`` given
as in a stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from vidllm_ext import ops, reference
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Baseline, Measured
from vidllm_ext.bench.shapes import (
    FrameShape,
    dtype_label,
    dtype_size,
    video_frames,
)
from vidllm_ext.bench.tables import number_columns, text_columns

CPU_SPEEDUP_TARGET = 1.5  # CPU op vs reference at the cpu shape
GPU_COPY_FRACTION_TARGET = 0.8  # GPU feature/absolute path vs the measured copy bandwidth


@dataclass(frozen=True)
class DropCase:
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
    DropCase("drop", "feature", "absolute", 0.9),
    DropCase("drop", "feature", "relative", 0.7),
    DropCase("drop", "pixel", "absolute", 0.05),
    DropCase("drop_into", "feature", "absolute", 0.9),
    DropCase("keep_mask", "feature", "absolute", 0.9),
)


def bytes_moved(shape: FrameShape, op: str, kept_tokens: int) -> int:
    """Bytes the op must move: frames and prev read once, float32 scores and the bool mask
    written, then (unless ``op == "keep_mask"``) each kept row read again and written, plus its
    int64 index.

    Example:
        >>> bytes_moved(FRAME_DROP_SHAPES["cpu"], "keep_mask", 0)  # 65*256*1024*4 + 64*256*5
        68239360
    """
    row_bytes = shape.dim * dtype_size(shape.dtype)
    positions = shape.steps * shape.tokens
    scored = (positions + shape.tokens) * row_bytes + positions * (4 + 1)
    if op == "keep_mask":
        return scored
    return scored + kept_tokens * (2 * row_bytes + 8)


def flops(shape: FrameShape, method: str) -> int:
    """FLOPs of scoring: per element 3 multiply-adds for ``feature`` (dot and both squared norms),
    2 for ``pixel`` (difference and absolute sum); a multiply-add is 2 FLOPs.

    Example:
        >>> flops(FRAME_DROP_SHAPES["cpu"], "pixel")  # 4 * 64 * 256 * 1024
        67108864
    """
    multiply_adds = 3 if method == "feature" else 2
    return 2 * multiply_adds * shape.steps * shape.tokens * shape.dim


def bind(
    fn: Callable[..., object], case: DropCase, frames: torch.Tensor, prev: torch.Tensor
) -> Callable[[], object]:
    """``fn(frames, threshold, method=, mode=, prev=)`` with ``case``'s arguments, as a thunk.

    Example:
        >>> keep = bind(vidllm_ext.ops.dtd_keep_mask, CASES[0], frames, prev)()
    """
    return lambda: fn(frames, case.threshold, method=case.method, mode=case.mode, prev=prev)


def op_call(case: DropCase, frames: torch.Tensor, prev: torch.Tensor) -> Callable[[], object]:
    """The vidllm op of ``case`` with its inputs (and, for ``drop_into``, its outputs) bound.

    Example:
        >>> result = op_call(CASES[0], *video_frames(FRAME_DROP_SHAPES["cpu"]))()
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


def reference_fn(case: DropCase) -> Callable[..., object]:
    """The reference function computing what ``case``'s op computes.

    Example:
        >>> reference_fn(CASES[-1]) is vidllm_ext.reference.dtd_keep_mask
        True
    """
    return reference.dtd_keep_mask if case.op == "keep_mask" else reference.drop_redundant_tokens


def cases(shape: FrameShape, device: torch.device, quick: bool) -> Iterator[harness.Case]:
    """Every case of :data:`CASES` on ``shape``: feature inputs for feature cases, pixel patches
    for pixel ones."""
    inputs = {}
    for case in CASES:
        if case.method not in inputs:
            inputs[case.method] = video_frames(shape, kind=case.method, device=device)
        yield timed_case(shape, case, *inputs[case.method], quick)


def timed_case(
    shape: FrameShape, case: DropCase, frames: torch.Tensor, prev: torch.Tensor, quick: bool
) -> harness.Case:
    """``case`` on ``(frames, prev)``: op, reference and compiled reference, the kept share
    and the cost, after checking the op's keep mask against the reference's."""
    keep_mask = bind(ops.dtd_keep_mask, case, frames, prev)()
    expected = bind(reference.dtd_keep_mask, case, frames, prev)()
    # A few tokens within float32 rounding of the threshold may differ; more means a broken op.
    differing = int((keep_mask != expected).sum())
    kept_tokens = int(keep_mask.sum())
    ref = reference_fn(case)
    return harness.Case(
        cells=(
            shape.label,
            dtype_label(shape.dtype),
            case.op,
            case.label,
            f"{case.threshold:g}",
            f"{1.0 - kept_tokens / max(keep_mask.numel(), 1):.1%}",
        ),
        op=op_call(case, frames, prev),
        baselines=(
            Baseline("ref", bind(ref, case, frames, prev)),
            harness.compiled_baseline(lambda: bind(torch.compile(ref), case, frames, prev), quick),
        ),
        bytes=bytes_moved(shape, case.op, kept_tokens),
        flops=flops(shape, case.method),
        notes=(
            (f"keep mask differs from the reference at {differing} of {keep_mask.numel()}",)
            if differing
            else ()
        ),
        spec=case,
    )


def targets(
    device: torch.device, measured: list[Measured], copy_bytes_per_s: float | None
) -> list[str]:
    """The CPU speedup target (cpu shape) and the GPU copy-bandwidth target, with verdicts."""
    return [*_cpu_targets(device, measured), *_gpu_targets(measured, copy_bytes_per_s)]


def _cpu_targets(device: torch.device, measured: list[Measured]) -> list[str]:
    title = f"target CPU op >= {CPU_SPEEDUP_TARGET:g}x faster than the reference (cpu shape)"
    lines = []
    for item in measured:
        speedup = item.speedup_over("ref")
        if device.type == "cpu" and item.shape.name == "cpu" and item.spec.op == "drop":
            lines.append(f"{title}, {_where(item)}: {harness.verdict(speedup, CPU_SPEEDUP_TARGET)}")
    return lines or [f"{title}: not measured in this run (needs --device cpu and the cpu shape)"]


def _gpu_targets(measured: list[Measured], copy_bytes_per_s: float | None) -> list[str]:
    title = f"target GPU feature/absolute path >= {GPU_COPY_FRACTION_TARGET:.0%} of copy bandwidth"
    items = [
        item
        for item in measured
        if item.spec.label == "feature/absolute" and item.spec.op in ("drop", "drop_into")
    ]
    return harness.copy_fraction_verdicts(
        title, items, copy_bytes_per_s, GPU_COPY_FRACTION_TARGET, _where
    )


def _where(item: Measured) -> str:
    return f"{item.shape.name} {item.spec.op} {item.spec.label}"


TITLE = "Frame-difference token drop benchmark"
COLUMNS = text_columns("shape", "dtype", "op", "method/mode")
COLUMNS += number_columns("threshold", "dropped")
