"""pytest-benchmark suite: one decode step of ops.packed_attention vs dequantize + SDPA on the CPU,
at the Qwen2.5-VL-7B attention shape (28 query heads, 4 KV heads, head_dim 128, bfloat16) over a
cache of 4096 tokens, batch 1, for each configuration of vidllm_ext.bench.kv_attention.

Run: ``pytest benchmarks/test_kv_attention_cpu.py --benchmark-only``. Each group is one
configuration; compare its ``packed`` and ``dequantize_sdpa`` rows. ``extra_info`` holds the cost
model's bytes (packed: the layer's bytes + q + output; dequantize + SDPA: that plus the bfloat16
keys and values written and read again) and the achieved GB/s of the median.
"""

from __future__ import annotations

import functools

import pytest

from vidllm_ext.bench.kv_attention import CONFIGS, MIN_COSINE, build_case, min_cosine

TOKENS = 4096
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=2, min_rounds=5)


@functools.cache
def case_of(config: str):
    return build_case(config, 1, TOKENS, "cpu")


@pytest.mark.parametrize("implementation", ["packed", "dequantize_sdpa"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_kv_attention(benchmark, config: str, implementation: str) -> None:
    case = case_of(config)
    if implementation == "packed":
        cosine = min_cosine(case.packed(), case.dequantize_sdpa())
        assert cosine > MIN_COSINE, f"{config}: packed vs dequantize + SDPA cosine {cosine}"
    benchmark.group = f"packed attention decode {config} B=1 T={TOKENS} bf16"
    benchmark(case.packed if implementation == "packed" else case.dequantize_sdpa)
    if benchmark.stats is None:  # --benchmark-disable: the call ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    moved = case.packed_bytes if implementation == "packed" else case.dequantize_bytes
    benchmark.extra_info["bytes_moved"] = moved
    benchmark.extra_info["flops"] = case.flops
    benchmark.extra_info["GB/s"] = round(moved / median / 1e9, 3)
