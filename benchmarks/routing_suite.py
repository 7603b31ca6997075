"""Routing op microbenchmarks: inputs, cases, cost model, and a run that times every op against
the plain-PyTorch reference and ``torch.compile(reference)`` (shared by ``gpu_routing.py`` and
the pytest-benchmark suite ``test_routing_cpu.py``).

Cost model: the bytes an op must move (workspace traffic not counted), with ``T`` tokens, ``K``
selected rows, ``D`` the width, ``e`` the element size:

- ``topk``: video scores read (float32) and the offsets, ``K_video`` int64 indices written;
- ``gather``: ``K`` rows read and written, plus the int64 index: ``2*K*D*e + 8*K``;
- ``scatter_add``: x read and y written whole, delta read, index and float32 weight read:
  ``2*T*D*e + K*D*e + 12*K``; ``2*K*D`` FLOPs;
- ``gather_fwd_bwd``: gather, then the gradient: ``T*D*e`` written (zeros where not gathered),
  ``K*D*e`` read, the index again: ``3*K*D*e + T*D*e + 16*K``;
- ``scatter_add_fwd_bwd``: scatter_add, then ``grad_x = grad_y`` (no copy), ``grad_y[index]``
  and delta read, grad_delta written, index and weight read, grad_weight written:
  ``2*T*D*e + 4*K*D*e + 28*K``; ``5*K*D`` FLOPs;
- ``gather_repeats_fwd_bwd``: ``gather_fwd_bwd`` with every row named about ``64*K/T`` times
  (the selected index modulo ``T/64``), so the backward adds repeated rows (bucketed once, then
  summed in index order): the same bytes as ``gather_fwd_bwd``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from shapes import RoutingShape

from vidllm_ext import ops, reference
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Budget, Column

CASES = (
    "topk",
    "gather",
    "scatter_add",
    "gather_fwd_bwd",
    "scatter_add_fwd_bwd",
    "gather_repeats_fwd_bwd",
)
# Pure data movement: on the GPU these should run near the copy bandwidth at long sequences.
GPU_COPY_FRACTION_TARGET = 0.7
GPU_TARGET_CASES = ("gather", "scatter_add")
GPU_TARGET_SHAPE = "long-video"


@dataclass(frozen=True)
class RoutingInputs:
    """One sequence in a routed layer: hidden ``[T, D]``, router scores, the selection."""

    hidden: torch.Tensor
    video_scores: torch.Tensor  # float32 [video tokens]
    offsets: torch.Tensor  # int64 [steps + 1] over the video tokens
    index: torch.Tensor  # int64 [K]: the selected rows, ascending
    delta: torch.Tensor  # [K, D]: the layer's update of the selected rows
    weight: torch.Tensor  # float32 [K]: 2 sigmoid(s) for video rows, 1 for text
    grad_y: torch.Tensor  # [T, D]


def routing_inputs(shape: RoutingShape, device: torch.device | str, seed: int = 0):
    """Random inputs (never zeros) laid out as half the text, the video steps, the other half.

    Example:
        >>> inputs = routing_inputs(ROUTING_SHAPES["cpu"], "cpu")
        >>> inputs.index.numel() == ROUTING_SHAPES["cpu"].selected
        True
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens, dim = shape.tokens, shape.dim

    def randn(*sizes, dtype=shape.dtype):
        return torch.randn(sizes, generator=generator, device=device).to(dtype)

    lead = shape.text_tokens // 2
    is_video = torch.zeros(tokens, dtype=torch.bool, device=device)
    is_video[lead : lead + shape.video_tokens] = True
    scores = randn(tokens, dtype=torch.float32)
    offsets = torch.arange(0, shape.video_tokens + 1, shape.tokens_per_step, device=device)
    index = ops.select_routed_tokens(scores, is_video, offsets, shape.keep_ratio)
    gates = 2 * torch.sigmoid(scores[index])
    weight = torch.where(is_video[index], gates, torch.ones_like(gates))
    return RoutingInputs(
        hidden=randn(tokens, dim),
        video_scores=scores[is_video].contiguous(),
        offsets=offsets,
        index=index,
        delta=randn(index.numel(), dim),
        weight=weight,
        grad_y=randn(tokens, dim),
    )


def bytes_moved(case: str, shape: RoutingShape) -> int:
    """The cost model's bytes (see the module docstring).

    Example:
        >>> bytes_moved("gather", ROUTING_SHAPES["cpu"])  # 2 * 960 * 1024 * 4 + 8 * 960
        7872000
    """
    t, k, d = shape.tokens, shape.selected, shape.dim
    e = torch.empty((), dtype=shape.dtype).element_size()
    kept_video = k - shape.text_tokens
    return {
        "topk": 4 * shape.video_tokens + 8 * (shape.steps + 1) + 8 * kept_video,
        "gather": 2 * k * d * e + 8 * k,
        "scatter_add": 2 * t * d * e + k * d * e + 12 * k,
        "gather_fwd_bwd": 3 * k * d * e + t * d * e + 16 * k,
        "gather_repeats_fwd_bwd": 3 * k * d * e + t * d * e + 16 * k,
        "scatter_add_fwd_bwd": 2 * t * d * e + 4 * k * d * e + 28 * k,
    }[case]


def flops(case: str, shape: RoutingShape) -> int:
    """FLOPs: a multiply-add per updated element forward (``w * delta + x``), three backward
    (``w * g`` and the ``g * delta`` sum); 0 for pure data movement."""
    per_element = {"scatter_add": 2, "scatter_add_fwd_bwd": 5}.get(case, 0)
    return per_element * shape.selected * shape.dim


def make_call(case: str, impl, inputs: RoutingInputs, keep_ratio: float) -> Callable[[], object]:
    """``case`` computed by ``impl`` (``vidllm_ext.ops``, ``vidllm_ext.reference`` or a module-like
    object of compiled functions) on ``inputs``, as a thunk.

    Example:
        >>> call = make_call("gather", vidllm_ext.ops, routing_inputs(shape, "cpu"), 0.2)
        >>> rows = call()
    """
    x, index, delta, weight = inputs.hidden, inputs.index, inputs.delta, inputs.weight
    if case == "topk":
        return lambda: impl.topk_per_segment(inputs.video_scores, inputs.offsets, keep_ratio)
    if case == "gather":
        return lambda: impl.gather_rows(x, index)
    if case == "scatter_add":
        return lambda: impl.scatter_add_rows(x, index, delta, weight)
    leaves = [t.detach().clone().requires_grad_() for t in (x, delta, weight)]
    x_leaf, delta_leaf, weight_leaf = leaves
    if case == "gather_repeats_fwd_bwd":
        index = index % max(1, x.shape[0] // 64)  # each row named about 64 * K / T times
    if case in ("gather_fwd_bwd", "gather_repeats_fwd_bwd"):
        grad_rows = inputs.grad_y[: index.numel()]
        return lambda: torch.autograd.grad(impl.gather_rows(x_leaf, index), x_leaf, grad_rows)
    return lambda: torch.autograd.grad(
        impl.scatter_add_rows(x_leaf, index, delta_leaf, weight_leaf), leaves, inputs.grad_y
    )


class _Compiled:
    """``torch.compile`` of the reference functions, as a module-like object for make_call."""

    def __init__(self):
        self.topk_per_segment = torch.compile(reference.topk_per_segment)
        self.gather_rows = torch.compile(reference.gather_rows)
        self.scatter_add_rows = torch.compile(reference.scatter_add_rows)


@dataclass(frozen=True)
class Measured:
    """What one case measured; times are medians in seconds, ``compiled_s`` a reason string when
    ``torch.compile(reference)`` was not timed."""

    shape: RoutingShape
    case: str
    bytes: int
    flops: int
    op_s: float
    reference_s: float
    compiled_s: float | str


def measure(
    shape: RoutingShape, case: str, inputs: RoutingInputs, budget: Budget, compile_reference: bool
) -> Measured:
    """Times ``case``: op, reference and (when ``compile_reference``) the compiled reference, in
    alternation, after checking the op agrees with the reference."""
    keep_ratio = shape.keep_ratio
    calls = [make_call(case, impl, inputs, keep_ratio) for impl in (ops, reference)]
    _check_agreement(case, calls[0](), calls[1]())
    compiled: Callable[[], object] | str = "torch.compile(reference) skipped with --quick"
    if compile_reference:
        torch.compiler.reset()
        compiled = make_call(case, _Compiled(), inputs, keep_ratio)
        try:
            compiled()  # compiles now, outside the timing
        except Exception as exc:
            compiled = "torch.compile(reference) failed: " + harness.compile_failure(exc)
    if callable(compiled):
        calls.append(compiled)
    timings = harness.time_callables(calls, inputs.hidden.device, budget)
    return Measured(
        shape=shape,
        case=case,
        bytes=bytes_moved(case, shape),
        flops=flops(case, shape),
        op_s=timings[0],
        reference_s=timings[1],
        compiled_s=timings[2] if callable(compiled) else compiled,
    )


def _check_agreement(case: str, actual, expected) -> None:
    # Exact for indices, rows and scatter outputs; gradients of the weight differ in float order.
    actual = actual if isinstance(actual, (tuple, list)) else [actual]
    expected = expected if isinstance(expected, (tuple, list)) else [expected]
    for got, want in zip(actual, expected):
        if case == "scatter_add_fwd_bwd" and got.dim() == 1:
            close = torch.allclose(got.double(), want.double(), rtol=1e-3, atol=1e-3)
        elif case == "gather_repeats_fwd_bwd" and got.is_cuda:  # torch's CUDA sum order varies
            close = torch.allclose(got.double(), want.double(), rtol=1e-2, atol=1e-2)
        else:
            close = torch.equal(got, want)
        if not close:
            print(f"  note: {case}: the op disagrees with the reference", file=sys.stderr)


def run(device: torch.device, shapes: list[RoutingShape], quick: bool) -> list[Measured]:
    """Every case on every shape; progress on stderr."""
    budget = harness.QUICK if quick else harness.FULL
    results = []
    for shape_number, shape in enumerate(shapes):
        inputs = routing_inputs(shape, device)
        for case_number, case in enumerate(CASES):
            step = shape_number * len(CASES) + case_number + 1
            print(
                f"[{step}/{len(shapes) * len(CASES)}] {shape.name} {shape.label} {case}",
                file=sys.stderr,
                flush=True,
            )
            results.append(measure(shape, case, inputs, budget, not quick))
    return results


def report(
    device: torch.device,
    shapes: list[RoutingShape],
    measured: list[Measured],
    quick: bool,
    copy_bytes_per_s: float | None,
) -> tuple[str, str]:
    """The report as (plain text, markdown)."""
    budget = harness.QUICK if quick else harness.FULL
    notes: list[str] = []
    rows = [_row(item, copy_bytes_per_s, notes) for item in measured]
    columns = _columns(copy_bytes_per_s is not None)
    facts = [
        *harness.run_facts(device, budget, copy_bytes_per_s),
        ("shapes", "; ".join(f"{shape.name}: {shape.about}" for shape in shapes)),
    ]
    if device.type == "cpu":  # other processes share the cores: say how busy they were
        facts.append(("host load average (1 min) at the end", f"{os.getloadavg()[0]:.2f}"))
    notes = [f"[{number}] {note}" for number, note in enumerate(notes, start=1)]
    lines = [*notes, *_targets(measured, copy_bytes_per_s)]
    return harness.render_report(
        ("Routing op benchmark", "Layer-skip routing op benchmark"), facts, columns, rows, lines
    )


def _columns(with_copy_fraction: bool) -> list[Column]:
    return [
        Column("case", numeric=False),
        Column("tokens x dim", numeric=False),
        Column("dtype", numeric=False),
        Column("op", numeric=False),
        Column("rows K"),
        Column("MB moved"),
        Column("op ms"),
        Column("GB/s"),
        Column("GFLOP/s"),
        *([Column("of copy BW")] if with_copy_fraction else []),
        Column("ref ms"),
        Column("compiled ms"),
        Column("vs ref"),
        Column("vs compiled"),
    ]


def _row(item: Measured, copy_bytes_per_s: float | None, notes: list[str]) -> list[str]:
    shape, op_s = item.shape, item.op_s
    bandwidth = item.bytes / op_s
    copy = [] if copy_bytes_per_s is None else [f"{bandwidth / copy_bytes_per_s:.0%}"]
    compiled_ms, compiled_speedup = harness.compiled_cells(item.compiled_s, op_s, notes)
    dtype = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[shape.dtype]
    rows = shape.selected - shape.text_tokens if item.case == "topk" else shape.selected
    return [
        shape.name,
        shape.label,
        dtype,
        item.case,
        str(rows),
        f"{item.bytes / 1e6:.1f}",
        harness.format_ms(op_s),
        f"{bandwidth / 1e9:.1f}",
        f"{item.flops / op_s / 1e9:.1f}" if item.flops else "-",
        *copy,
        harness.format_ms(item.reference_s),
        compiled_ms,
        f"{item.reference_s / op_s:.2f}x",
        compiled_speedup,
    ]


def _targets(measured: list[Measured], copy_bytes_per_s: float | None) -> list[str]:
    title = (
        f"target GPU {', '.join(GPU_TARGET_CASES)} >= {GPU_COPY_FRACTION_TARGET:.0%} of copy "
        f"bandwidth ({GPU_TARGET_SHAPE} shape)"
    )
    if copy_bytes_per_s is None:
        return [f"{title}: not measured in this run (needs --device cuda)"]
    lines = []
    for item in measured:
        if item.shape.name == GPU_TARGET_SHAPE and item.case in GPU_TARGET_CASES:
            fraction = item.bytes / item.op_s / copy_bytes_per_s
            verdict = "PASS" if fraction >= GPU_COPY_FRACTION_TARGET else "MISS"
            lines.append(f"{title}, {item.case}: {fraction:.1%} {verdict}")
    return lines or [f"{title}: not measured in this run (needs the {GPU_TARGET_SHAPE} shape)"]
