"""The routing ops as torch custom ops: opcheck (schema, fake tensors, autograd registration) and
torch.compile(fullgraph=True), forward and backward."""

import pytest
import torch
from support.routing_cases import offsets_from_counts, random_rows, random_scores, unique_index

from vidllm_ext import ops


@pytest.fixture
def rows():
    x = random_rows(11, 6, torch.float32, seed=40).requires_grad_()
    index = unique_index(11, 5, seed=41)
    delta = random_rows(5, 6, torch.float32, seed=42).requires_grad_()
    weight = torch.rand(5, generator=torch.Generator().manual_seed(43)).requires_grad_()
    return x, index, delta, weight


def test_opcheck_topk():
    scores = random_scores(30, torch.float32, seed=44, hostile=True)
    offsets = offsets_from_counts([7, 0, 20, 3])
    torch.library.opcheck(torch.ops.vidllm.topk_per_segment.default, (scores, offsets, 0.3))
    index = torch.empty(12, dtype=torch.int64)
    total = torch.empty(1, dtype=torch.int64)
    torch.library.opcheck(
        torch.ops.vidllm.topk_per_segment_into.default, (scores, offsets, 0.3, index, total)
    )


def test_opcheck_rows(rows):
    x, index, delta, weight = rows
    torch.library.opcheck(torch.ops.vidllm.gather_rows.default, (x, index, False))
    torch.library.opcheck(
        torch.ops.vidllm.scatter_add_rows.default, (x, index, delta, weight, False)
    )
    torch.library.opcheck(torch.ops.vidllm.scatter_add_rows.default, (x, index, delta, None, True))
    grad = torch.randn(5, 6)
    torch.library.opcheck(torch.ops.vidllm.gather_rows_backward.default, (grad, index, 11))
    backward = torch.ops.vidllm.scatter_add_rows_backward.default
    grad_y = torch.randn(11, 6)
    for need_delta, need_weight in [(True, True), (True, False), (False, True)]:
        args = (grad_y, index, delta.detach(), weight.detach(), need_delta, need_weight)
        torch.library.opcheck(backward, args)


def routed_step(x, index, delta, weight):
    """gather -> a layer -> scatter_add with weights, then a loss."""
    selected = ops.gather_rows(x, index)
    update = torch.tanh(selected + delta) - selected
    return ops.scatter_add_rows(x, index, update, weight).square().sum()


def test_torch_compile_fullgraph_forward_and_backward(rows):
    torch._dynamo.reset()
    x, index, delta, weight = rows
    compiled = torch.compile(routed_step, fullgraph=True)
    loss = compiled(x, index, delta, weight)
    grads = torch.autograd.grad(loss, (x, delta, weight))
    eager_loss = routed_step(x, index, delta, weight)
    eager_grads = torch.autograd.grad(eager_loss, (x, delta, weight))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    for actual, expected in zip(grads, eager_grads):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def select_then_gather(scores, offsets, x):
    index = ops.topk_per_segment(scores, offsets, 0.25)
    return ops.gather_rows(x, index) * 2, index


def test_torch_compile_fullgraph_topk():
    torch._dynamo.reset()
    scores = random_scores(40, torch.float32, seed=45)
    offsets = offsets_from_counts([10, 25, 5])
    x = random_rows(40, 8, torch.float32, seed=46)
    compiled = torch.compile(select_then_gather, fullgraph=True)
    for actual, expected in zip(
        compiled(scores, offsets, x), select_then_gather(scores, offsets, x)
    ):
        assert torch.equal(actual, expected)


def fixed_capacity(scores, offsets, index):
    return ops.topk_per_segment_into(scores, offsets, 0.5, index)


def test_torch_compile_fixed_capacity():
    torch._dynamo.reset()
    scores = random_scores(40, torch.bfloat16, seed=47)
    offsets = offsets_from_counts([10, 25, 5])
    buffers = [torch.zeros(30, dtype=torch.int64) for _ in range(2)]
    total = torch.compile(fixed_capacity, fullgraph=True)(scores, offsets, buffers[0])
    assert torch.equal(total, fixed_capacity(scores, offsets, buffers[1]))
    assert torch.equal(buffers[0], buffers[1])
