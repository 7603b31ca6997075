"""pytest-benchmark suite: the KV packing ops and group quantizers vs their PyTorch reference at
the Qwen2.5-VL-7B shape (4 KV heads x 4096 tokens x 128 channels, bfloat16).

Run: ``pytest benchmarks/test_kv_quant_cpu.py --benchmark-only``. Each group is one case; compare
its ``op`` and ``reference`` rows. ``extra_info`` holds the cost model's bytes and FLOPs and the
achieved GB/s of the median.
"""

from __future__ import annotations

import pytest

from vidllm_ext.bench.kv_quant import build_cases, outputs_agree
from vidllm_ext.bench.shapes import KV_QUANT_SHAPES

SHAPE = KV_QUANT_SHAPES["qwen2.5-vl-7b"]
CASES = {case.name: case for case in build_cases(SHAPE.sizes, SHAPE.dtype, "cpu")}
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=2, min_rounds=5)


@pytest.mark.parametrize("implementation", ["op", "reference"])
@pytest.mark.parametrize("name", list(CASES))
def test_kv_quant_pack(benchmark, name: str, implementation: str) -> None:
    case = CASES[name]
    if implementation == "op":
        assert outputs_agree(case), f"{name}: op and reference disagree"
    benchmark.group = f"kv {SHAPE.label} bf16 {name}"
    fn = case.op if implementation == "op" else case.reference
    benchmark(fn, *case.args)
    if benchmark.stats is None:  # --benchmark-disable: the call ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["bytes_moved"] = case.bytes
    benchmark.extra_info["flops"] = case.flops
    benchmark.extra_info["GB/s"] = round(case.bytes / median / 1e9, 3)
