"""pytest-benchmark suite: the routing ops vs the PyTorch reference at the CPU shape.

Run: ``pytest benchmarks/test_routing_cpu.py --benchmark-only``. Each group is one case; compare
the ``op`` and ``reference`` rows within it. The cost model is in
``vidllm_ext/bench/routing.py``.
"""

from __future__ import annotations

import pytest

from vidllm_ext import ops, reference
from vidllm_ext.bench.routing import CASES, bytes_moved, make_call, routing_inputs
from vidllm_ext.bench.shapes import ROUTING_SHAPES

SHAPE = ROUTING_SHAPES["cpu"]
IMPLEMENTATIONS = {"op": ops, "reference": reference}
# Warm-up keeps first-call costs (page faults of fresh outputs, lazy initialization) out of the
# rounds, and at least 10 rounds make the median worth reading.
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=3, min_rounds=10)


@pytest.fixture(scope="module")
def inputs():
    return routing_inputs(SHAPE, "cpu")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES)
def test_routing_op(benchmark, inputs, case: str, implementation: str) -> None:
    benchmark.group = f"{SHAPE.name} {SHAPE.label} {case}"
    benchmark.extra_info["bytes_moved"] = bytes_moved(case, SHAPE)
    benchmark.extra_info["rows"] = SHAPE.selected
    call = make_call(case, IMPLEMENTATIONS[implementation], inputs, SHAPE.keep_ratio)
    result = benchmark(call)
    assert result is not None
