"""Layer-skip routing op benchmark: inputs, cases, cost model and targets; every op timed against
the plain-PyTorch reference and ``torch.compile(reference)`` (the pytest-benchmark suite
``benchmarks/test_routing_cpu.py`` uses the same inputs and calls).

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

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from vidllm_ext import ops, reference
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Baseline, Measured
from vidllm_ext.bench.shapes import (
    RoutingShape,
    dtype_label,
    dtype_size,
)
from vidllm_ext.bench.tables import number_columns, text_columns

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


def routing_inputs(shape: RoutingShape, device: torch.device | str, seed: int = 0) -> RoutingInputs:
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
    e = dtype_size(shape.dtype)
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


def cases(shape: RoutingShape, device: torch.device, quick: bool) -> Iterator[harness.Case]:
    """Every case of :data:`CASES` on one sequence of ``shape``, checked against the reference."""
    inputs = routing_inputs(shape, device)
    for case in CASES:
        op, ref = (make_call(case, impl, inputs, shape.keep_ratio) for impl in (ops, reference))
        rows = shape.selected - shape.text_tokens if case == "topk" else shape.selected
        yield harness.Case(
            cells=(shape.label, dtype_label(shape.dtype), case, str(rows)),
            op=op,
            baselines=(
                Baseline("ref", ref),
                harness.compiled_baseline(
                    lambda case=case: make_call(case, _Compiled(), inputs, shape.keep_ratio), quick
                ),
            ),
            bytes=bytes_moved(case, shape),
            flops=flops(case, shape),
            notes=_disagreement(case, op(), ref()),
            spec=case,
        )


def _disagreement(case: str, actual, expected) -> tuple[str, ...]:
    # Exact for indices, rows and scatter outputs; gradients of the weight differ in float order.
    actual = actual if isinstance(actual, (tuple, list)) else [actual]
    expected = expected if isinstance(expected, (tuple, list)) else [expected]
    for got, want in zip(actual, expected):
        if case == "scatter_add_fwd_bwd" and got.dim() == 1:
            close = torch.allclose(got.double(), want.double(), rtol=1e-3, atol=1e-3)
        elif case == "gather_repeats_fwd_bwd" and got.is_cuda:  # torch's CUDA sum order varies
            close = torch.allclose(got.double(), want.double(), rtol=1e-2, atol=1e-2)
        elif case == "gather_repeats_fwd_bwd" and got.is_floating_point():
            # The op sums a repeated row's gradients in index order (tests/test_routing_repeats.py
            # checks that bitwise); torch's CPU index_put sums them in its own order.
            scale = float(want.abs().max()) if want.numel() else 0.0
            close = torch.allclose(got.double(), want.double(), rtol=1e-5, atol=1e-6 * scale)
        else:
            close = torch.equal(got, want)
        if not close:
            return ("the op disagrees with the reference",)
    return ()


def targets(
    device: torch.device, measured: list[Measured], copy_bytes_per_s: float | None
) -> list[str]:
    """gather and scatter_add against the copy bandwidth at the long-video shape (GPU)."""
    title = (
        f"target GPU {', '.join(GPU_TARGET_CASES)} >= {GPU_COPY_FRACTION_TARGET:.0%} of copy "
        f"bandwidth ({GPU_TARGET_SHAPE} shape)"
    )
    items = [
        item
        for item in measured
        if item.shape.name == GPU_TARGET_SHAPE and item.spec in GPU_TARGET_CASES
    ]
    lines = harness.copy_fraction_verdicts(
        title, items, copy_bytes_per_s, GPU_COPY_FRACTION_TARGET, lambda item: item.spec
    )
    return lines or [f"{title}: not measured in this run (needs the {GPU_TARGET_SHAPE} shape)"]


TITLE = "Layer-skip routing op benchmark"
COLUMNS = text_columns("tokens x dim", "dtype", "op") + number_columns("rows K")
