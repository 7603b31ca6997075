"""Gradients of gather_rows and scatter_add_rows (backward kernels) against the reference's
autograd, a float64 oracle, and torch.autograd.gradcheck in float64."""

import pytest
import torch
from conftest import DEVICES
from support.helpers import assert_close_to_oracle
from support.routing_cases import ROW_DTYPES, random_rows, repeating_index, unique_index

from vidllm_ext import ops, reference


def leaf(tensor, device="cpu"):
    return tensor.detach().to(device).requires_grad_()


def scatter_case(dtype, device, rows=90, count=70, dim=257, seed=0, weighted=True):
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    generator = torch.Generator().manual_seed(seed)
    x = random_rows(rows, dim, dtype, seed)
    index = unique_index(rows, count, seed + 1)
    delta = random_rows(count, dim, dtype, seed + 2)
    weight = (torch.rand(count, generator=generator) * 2).to(accumulate) if weighted else None
    grad_y = random_rows(rows, dim, dtype, seed + 3)
    return x, index, delta, weight, grad_y


def grads(fn, inputs, grad_out):
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(fn(*inputs), leaves, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no_weight"])
def test_scatter_backward_matches_reference(device, dtype, weighted):
    x, index, delta, weight, grad_y = scatter_case(dtype, device, seed=1, weighted=weighted)
    inputs = [leaf(x, device), index.to(device), leaf(delta, device)]
    inputs.append(None if weight is None else leaf(weight, device))
    actual = grads(ops.scatter_add_rows, inputs, grad_y.to(device))
    ref_inputs = [leaf(x), index, leaf(delta), None if weight is None else leaf(weight)]
    expected = grads(reference.scatter_add_rows, ref_inputs, grad_y)
    assert torch.equal(actual[0].cpu(), grad_y) and torch.equal(actual[0].cpu(), expected[0])
    assert actual[1].dtype == dtype and torch.equal(actual[1].cpu(), expected[1])
    if weighted:
        oracle = (grad_y.double()[index] * delta.double()).sum(1)
        assert actual[2].dtype == weight.dtype
        assert_close_to_oracle(actual[2], expected[2], oracle)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16])
def test_scatter_weight_grad_keeps_the_weight_dtype(device, weight_dtype):
    x, index, delta, weight, grad_y = scatter_case(torch.bfloat16, device, seed=2)
    weight = weight.to(weight_dtype)
    inputs = [x.to(device), index.to(device), delta.to(device), leaf(weight, device)]
    (actual,) = grads(ops.scatter_add_rows, inputs, grad_y.to(device))
    (expected,) = grads(reference.scatter_add_rows, [x, index, delta, leaf(weight)], grad_y)
    assert actual.dtype == weight_dtype
    oracle = (grad_y.double()[index] * delta.double()).sum(1)
    assert_close_to_oracle(actual, expected, oracle)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("needs", ["x", "delta", "weight", "delta+weight"])
def test_scatter_backward_computes_only_what_is_needed(device, needs):
    x, index, delta, weight, grad_y = scatter_case(torch.float32, device, seed=3)
    wanted = needs.split("+")
    tensors = {"x": x, "delta": delta, "weight": weight}
    inputs = {k: leaf(t, device) if k in wanted else t.to(device) for k, t in tensors.items()}
    actual = grads(
        ops.scatter_add_rows,
        [inputs["x"], index.to(device), inputs["delta"], inputs["weight"]],
        grad_y.to(device),
    )
    ref = {k: leaf(t) if k in wanted else t for k, t in tensors.items()}
    expected = grads(
        reference.scatter_add_rows, [ref["x"], index, ref["delta"], ref["weight"]], grad_y
    )
    assert len(actual) == len(wanted)
    for name, got, want in zip(wanted, actual, expected):
        if name == "weight":
            oracle = (grad_y.double()[index] * delta.double()).sum(1)
            assert_close_to_oracle(got, want, oracle)
        else:
            assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
def test_gather_backward_matches_reference(device, dtype):
    x = random_rows(100, 129, dtype, seed=4)
    index = unique_index(100, 60, seed=5)
    grad_out = random_rows(60, 129, dtype, seed=6)
    (actual,) = grads(ops.gather_rows, [leaf(x, device), index.to(device)], grad_out.to(device))
    (expected,) = grads(reference.gather_rows, [leaf(x), index], grad_out)
    assert actual.dtype == dtype and torch.equal(actual.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_backward_sums_repeated_rows_in_index_order(device, dtype):
    x = random_rows(20, 33, dtype, seed=7)
    index = repeating_index(20, 90, seed=8)
    grad_out = random_rows(90, 33, dtype, seed=9)
    (actual,) = grads(ops.gather_rows, [leaf(x, device), index.to(device)], grad_out.to(device))
    expected = torch.zeros_like(x).index_add(0, index, grad_out)
    assert torch.equal(actual.cpu(), expected)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    delta = torch.randn(4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.tensor([7, 0, 3, 8])
    repeated = torch.tensor([2, 5, 2, 2, 0, 8])
    assert torch.autograd.gradcheck(lambda x: ops.gather_rows(x, repeated), (x,))
    assert torch.autograd.gradcheck(
        lambda x, delta, weight: ops.scatter_add_rows(x, index, delta, weight), (x, delta, weight)
    )
    assert torch.autograd.gradcheck(
        lambda x, delta: ops.scatter_add_rows(x, index, delta), (x, delta)
    )
    # A float32 weight on float64 rows is converted to float64, and its gradient back.
    weight32 = weight.detach().float().requires_grad_()
    y = ops.scatter_add_rows(x, index, delta, weight32)
    (grad,) = torch.autograd.grad(y.sum(), weight32)
    assert grad.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    x, index, delta, weight, grad_y = scatter_case(
        torch.bfloat16, device, rows=3000, count=2000, dim=1029, seed=11
    )
    inputs = [leaf(x, device), index.to(device), leaf(delta, device), leaf(weight, device)]
    first = grads(ops.scatter_add_rows, inputs, grad_y.to(device))
    for _ in range(2):
        again = grads(ops.scatter_add_rows, inputs, grad_y.to(device))
        for a, b in zip(first, again):
            assert torch.equal(a, b)
