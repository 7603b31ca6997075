"""CUDA kernels against the CPU kernels, bit for bit: both add every float32 sum in the same order
without FMA contraction, so plans, merged features and sizes are identical (NaN payloads and
signed zeros included). On a GPU, else on the CUDA emulator (conftest.py)."""

import math

import pytest
import torch
from conftest import CUDA_DEVICE, on_cuda
from support.helpers import FLOAT_DTYPES
from support.token_merge import bitwise, random_metric, video_tokens

from vidllm_ext import ops

pytestmark = pytest.mark.cuda

# (batch, tokens, channels): empty, T' < 2, several A tiles, channels past one chunk of 32,
# a long single row (many tiles in every block-wide scan of the plan kernel).
SIZES = [(1, 0, 7), (3, 1, 7), (3, 257, 64), (2, 1031, 100), (4, 2560, 64), (1, 20001, 16)]


def assert_bitwise_equal(cpu, cuda):
    for a, b in zip(cpu, cuda):
        assert b.device.type == CUDA_DEVICE
        assert torch.equal(bitwise(a), bitwise(b))


def hostile(metric):
    metric = metric.clone()
    metric[0, 3] = math.nan
    metric[-1, 2, 0] = math.inf
    metric[0, 5] = 0.0  # zero norm: the 1e-8 clamp
    metric[-1, :: max(metric.shape[1] // 7, 1)] = 1.0  # exact ties
    return metric


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,tokens,channels", SIZES)
def test_matching_equals_cpu(dtype, batch, tokens, channels):
    metric = random_metric(batch, tokens, channels, dtype, seed=tokens)
    if tokens > 7:
        metric = hostile(metric)
    for protected in (0, 1)[: tokens + 1]:  # the contract: protected <= tokens
        cap = max(tokens - protected, 0) // 2
        for r in sorted({0, 1, cap // 3, cap}):
            cpu = ops.bipartite_soft_matching(metric, r, protected=protected)
            with on_cuda() as device:
                cuda = ops.bipartite_soft_matching(metric.to(device), r, protected=protected)
            assert_bitwise_equal(cpu[:6], cuda[:6])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("dim", [1, 7, 256, 3584])
def test_merge_and_unmerge_equal_cpu(dtype, dim):
    metric = random_metric(3, 1030, 16, seed=60)
    x = random_metric(3, 1030, dim, dtype, seed=61)
    generator = torch.Generator().manual_seed(62)
    size = torch.rand(3, 1030, generator=generator) * 5 + 0.5  # not integers: the order shows
    plan = ops.bipartite_soft_matching(metric, 500, protected=2)
    with on_cuda() as device:
        cuda_plan = ops.bipartite_soft_matching(metric.to(device), 500, protected=2)
    for s in (None, size):
        cpu = ops.merge_wavg(plan, x, s)
        cpu_unmerged = ops.unmerge(plan, cpu[0])
        with on_cuda() as device:
            cuda = ops.merge_wavg(cuda_plan, x.to(device), None if s is None else s.to(device))
            cuda_unmerged = ops.unmerge(cuda_plan, cuda[0])
        assert_bitwise_equal(cpu, cuda)
        assert_bitwise_equal([cpu_unmerged], [cuda_unmerged])
    if dim > 1:  # rows starting one element in: no 16-byte vectors, the scalar path
        shifted = x[..., 1:]
        cpu = ops.merge_wavg(plan, shifted, size)
        cpu_unmerged = ops.unmerge(plan, cpu[0])
        with on_cuda() as device:
            cuda = ops.merge_wavg(cuda_plan, shifted.to(device), size.to(device))
            cuda_unmerged = ops.unmerge(cuda_plan, cuda[0])
        assert_bitwise_equal(cpu, cuda)
        assert_bitwise_equal([cpu_unmerged], [cuda_unmerged])


@pytest.mark.parametrize(
    "frames,per_frame,dim,dtype,frames_per_segment,tokens_per_segment",
    [
        (100, 256, 1024, torch.float32, 10, 30),  # LongVLM
        (64, 256, 3584, torch.bfloat16, 10, 64),  # Qwen2.5-VL-7B temporal steps
        (25, 16, 32, torch.float16, 10, 30),  # a shorter last segment
        (23, 4, 16, torch.float32, 10, 30),  # a last segment under the target
    ],
)
def test_hierarchical_merge_equals_cpu(
    frames, per_frame, dim, dtype, frames_per_segment, tokens_per_segment
):
    tokens = video_tokens(frames, per_frame, dim, dtype, seed=63)
    kwargs = dict(frames_per_segment=frames_per_segment, tokens_per_segment=tokens_per_segment)
    cpu = ops.hierarchical_merge(tokens, **kwargs)
    with on_cuda() as device:
        cuda = ops.hierarchical_merge(tokens.to(device), **kwargs)
    assert_bitwise_equal(cpu, cuda)
