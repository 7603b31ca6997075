"""The DTD ops as torch custom ops: opcheck and torch.compile(fullgraph=True)."""

import pytest
import torch
from support.helpers import video_frames

from vidllm_ext import ops


@pytest.fixture
def frames():
    return video_frames(5, 7, 16, torch.float32, "cpu", seed=30)


def test_opcheck_scores_and_mask(frames):
    prev = torch.randn(7, 16)
    torch.library.opcheck(torch.ops.vidllm.dtd_scores.default, (frames, prev, "feature"))
    # With prev: opcheck compares outputs without equal_nan, and step 0 is NaN without prev.
    torch.library.opcheck(torch.ops.vidllm.dtd_scores.default, (frames, prev, "pixel"))
    torch.library.opcheck(
        torch.ops.vidllm.dtd_keep_mask.default, (frames, None, 0.5, "feature", "relative")
    )
    torch.library.opcheck(
        torch.ops.vidllm.dtd_keep_mask.default, (frames, prev, 0.3, "pixel", "absolute")
    )


def test_opcheck_compaction(frames):
    keep = ops.dtd_keep_mask(frames, 0.5, mode="relative")
    torch.library.opcheck(torch.ops.vidllm.compact_tokens.default, (frames, keep))
    outputs = (
        torch.empty(40, 16),
        torch.empty(40, dtype=torch.int64),
        torch.empty(5, dtype=torch.int32),
        torch.empty(1, dtype=torch.int64),
    )
    torch.library.opcheck(torch.ops.vidllm.compact_tokens_into.default, (frames, keep, *outputs))


def pipeline(frames, prev):
    result = ops.drop_redundant_tokens(frames, 0.9, prev=prev)
    return result.kept * 2, result.kept_index, result.counts, result.drop_ratio


def test_torch_compile_fullgraph_matches_eager(frames):
    torch._dynamo.reset()
    prev = torch.randn(7, 16)
    compiled = torch.compile(pipeline, fullgraph=True)
    for actual, expected in zip(compiled(frames, prev), pipeline(frames, prev)):
        assert torch.equal(actual, expected)


def fixed_capacity(frames, kept, kept_index):
    keep = ops.dtd_keep_mask(frames, 0.5, mode="relative")
    return ops.compact_tokens_into(frames, keep, kept, kept_index)


def test_torch_compile_fixed_capacity(frames):
    torch._dynamo.reset()
    buffers = [(torch.zeros(40, 16), torch.zeros(40, dtype=torch.int64)) for _ in range(2)]
    total = torch.compile(fixed_capacity, fullgraph=True)(frames, *buffers[0])
    expected_total = fixed_capacity(frames, *buffers[1])
    assert torch.equal(total, expected_total)
    assert torch.equal(buffers[0][0], buffers[1][0]) and torch.equal(buffers[0][1], buffers[1][1])
