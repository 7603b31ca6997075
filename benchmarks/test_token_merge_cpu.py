"""pytest-benchmark suite: token merging ops vs the PyTorch reference on the CPU.

Run: ``pytest benchmarks/test_token_merge_cpu.py --benchmark-only``. Each group is one stage
(round 1 of the LongVLM shape) or the whole hierarchical merge; compare the ``op`` and
``reference`` rows within it. ``python -m vidllm_ext bench --family token_merge --device cpu``
prints the same cases with the cost model and torch.compile(reference).
"""

from __future__ import annotations

import pytest
import torch

from vidllm_ext.bench.shapes import TOKEN_MERGE_SHAPES, dtype_label
from vidllm_ext.bench.token_merge import (
    StageCase,
    end_to_end_case,
    first_round_cases,
    video_tokens,
)

SHAPE = TOKEN_MERGE_SHAPES["longvlm"]


@pytest.fixture(scope="module")
def cases() -> dict[str, StageCase]:
    """Round-1 stages and the whole merge at the LongVLM shape, keyed by stage name."""
    tokens = video_tokens(SHAPE, torch.device("cpu"))
    every = [*first_round_cases(SHAPE, tokens), end_to_end_case(SHAPE, tokens)]
    return {case.stage.split(" ")[0]: case for case in every}


@pytest.mark.benchmark(warmup=True, warmup_iterations=2, min_rounds=5)
@pytest.mark.parametrize("implementation", ["op", "reference"])
@pytest.mark.parametrize("stage", ["metric", "match", "plan", "merge", "hierarchical_merge"])
def test_merge(benchmark, cases, stage: str, implementation: str) -> None:
    case = cases[stage]
    benchmark.group = f"{SHAPE.name} {SHAPE.label} {dtype_label(SHAPE.dtype)} {case.stage}"
    benchmark.extra_info["bytes_moved"] = case.cost.bytes
    benchmark.extra_info["flops"] = case.cost.flops
    if implementation == "op":
        benchmark(case.op)
    else:
        benchmark(case.reference, *case.reference_args)
