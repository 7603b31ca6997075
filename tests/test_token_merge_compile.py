"""The merge ops as torch custom ops: opcheck, torch.compile(fullgraph=True) and autograd."""

import pytest
import torch
from support.token_merge import random_metric, video_tokens

from vidllm_ext import ops, reference


@pytest.fixture
def inputs():
    metric = random_metric(2, 13, 8, seed=50)
    x = random_metric(2, 13, 6, seed=51)
    return metric, x


def test_opcheck_matching_merge_unmerge(inputs):
    metric, x = inputs
    torch.library.opcheck(torch.ops.vidllm.bipartite_soft_matching.default, (metric, 4, 1))
    plan = ops.bipartite_soft_matching(metric, 4, protected=1)
    plan_args = (plan.slot, plan.kept_index, plan.source_offsets, plan.source_index)
    size = torch.randint(1, 4, (2, 13)).float()
    for grad in (False, True):
        x_in = x.clone().requires_grad_(grad)
        for s in (None, size):
            torch.library.opcheck(torch.ops.vidllm.merge_wavg.default, (x_in, s, *plan_args))
    merged = ops.merge_wavg(plan, x)[0].requires_grad_()
    torch.library.opcheck(torch.ops.vidllm.unmerge.default, (merged, plan.slot))


def test_opcheck_hierarchical():
    tokens = video_tokens(7, 6, 8, seed=52).reshape(42, 8)
    op = torch.ops.vidllm.hierarchical_merge.default
    torch.library.opcheck(op, (tokens, [0, 18, 36, 42], 5, 2))  # frames 3 per segment
    torch.library.opcheck(op, (tokens, [0, 1, 1, 30, 35, 42], 5, 2))  # uneven segments


def pipeline(metric, x):
    plan = ops.bipartite_soft_matching(metric, 5, protected=1)
    merged, size = ops.merge_wavg(plan, x)
    bias = ops.proportional_attention_bias(size)
    return ops.unmerge(plan, merged * 2), size, bias, plan.source_index


def test_torch_compile_fullgraph_matches_eager(inputs):
    torch._dynamo.reset()
    compiled = torch.compile(pipeline, fullgraph=True)
    for actual, expected in zip(compiled(*inputs), pipeline(*inputs)):
        assert torch.equal(actual, expected)


def test_torch_compile_hierarchical():
    torch._dynamo.reset()
    tokens = video_tokens(9, 8, 16, seed=53)

    def merge(tokens):
        result = ops.hierarchical_merge(tokens, frames_per_segment=4, tokens_per_segment=6)
        return result.tokens * result.sizes[:, None], result.source_index, result.segment

    compiled = torch.compile(merge, fullgraph=True)
    for actual, expected in zip(compiled(tokens), merge(tokens)):
        assert torch.equal(actual, expected)


def test_torch_compile_hierarchical_uneven():
    torch._dynamo.reset()
    tokens = video_tokens(1, 50, 16, seed=54)[0]

    def merge(tokens):
        offsets = [0, 20, 20, 23, 50]
        result = ops.hierarchical_merge(tokens, segment_offsets=offsets, tokens_per_segment=6)
        return result.tokens * result.sizes[:, None], result.source_index, result.segment

    compiled = torch.compile(merge, fullgraph=True)
    for actual, expected in zip(compiled(tokens), merge(tokens)):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("sized", [False, True])
def test_merge_wavg_gradient_matches_reference(inputs, sized):
    metric, x = inputs
    size = torch.randint(1, 4, (2, 13)).float() if sized else None
    plan = ops.bipartite_soft_matching(metric, 5, protected=1)
    upstream = torch.randn(2, 8, 6)
    grads = []
    for impl in (ops, reference):
        x_in = x.clone().requires_grad_()
        merged, _ = impl.merge_wavg(plan, x_in, size)
        restored = impl.unmerge(plan, merged * 3)
        (restored.sum() + (merged * upstream).sum()).backward()
        grads.append(x_in.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_no_grad_and_inference_mode(inputs):
    metric, x = inputs
    plan = ops.bipartite_soft_matching(metric, 5)
    expected = ops.merge_wavg(plan, x)
    with torch.no_grad():
        merged = ops.merge_wavg(plan, x.requires_grad_())
        assert not merged[0].requires_grad
    with torch.inference_mode():
        plan = ops.bipartite_soft_matching(metric, 5)
        inference = ops.merge_wavg(plan, x.detach())
        restored = ops.unmerge(plan, inference[0])
    for a, b in zip((*merged, *inference), (*expected, *expected)):
        assert torch.equal(a, b)
    assert restored.shape == x.shape
