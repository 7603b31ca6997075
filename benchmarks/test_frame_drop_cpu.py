"""pytest-benchmark suite: vidllm ops vs the PyTorch reference at the CPU shape.

Run: ``pytest benchmarks/test_frame_drop_cpu.py --benchmark-only``. Each group is one case;
compare the ``op`` and ``reference`` rows within it.
"""

from __future__ import annotations

import pytest
import torch

from vidllm_ext import ops, reference
from vidllm_ext.bench.frame_drop import CASES, DropCase, bytes_moved
from vidllm_ext.bench.shapes import FRAME_DROP_SHAPES, video_frames

SHAPE = FRAME_DROP_SHAPES["cpu"]
DROP_CASES = [case for case in CASES if case.op == "drop"]
IMPLEMENTATIONS = {"op": ops.drop_redundant_tokens, "reference": reference.drop_redundant_tokens}
# Warm-up keeps first-call costs (page faults of fresh outputs, lazy initialization) out of the
# rounds, and at least 10 rounds make the median worth reading.
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=3, min_rounds=10)


@pytest.fixture(scope="module")
def inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(frames, prev)`` per input kind (``feature``, ``pixel``) at the CPU shape."""
    return {kind: video_frames(SHAPE, kind=kind) for kind in ("feature", "pixel")}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", DROP_CASES, ids=lambda case: case.label)
def test_drop_redundant_tokens(benchmark, inputs, case: DropCase, implementation: str) -> None:
    frames, prev = inputs[case.method]
    benchmark.group = f"{SHAPE.name} {SHAPE.label} drop_redundant_tokens {case.label}"
    result = benchmark(
        IMPLEMENTATIONS[implementation],
        frames,
        case.threshold,
        method=case.method,
        mode=case.mode,
        prev=prev,
    )
    kept_tokens = result.kept.shape[0]
    drop_ratio = 1.0 - kept_tokens / result.keep_mask.numel()
    benchmark.extra_info["drop_ratio"] = round(drop_ratio, 4)
    benchmark.extra_info["bytes_moved"] = bytes_moved(SHAPE, case.op, kept_tokens)
    # The inputs are meant to be video-like: a realistic share of the tokens drops.
    assert 0.5 <= drop_ratio <= 0.8
