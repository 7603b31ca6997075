"""scatter_add_rows with repeated rows (the backward of gather_rows with a repeating index): the
updates of a row are bucketed once and added in index order, bitwise like a sequential float32
accumulation; and narrowing gives one canonical NaN per dtype, so CPU and CUDA agree bitwise on
NaN too."""

import math

import pytest
import torch
from conftest import DEVICES
from support.routing_cases import random_rows, repeating_index

from vidllm_ext import _C, ops, reference
from vidllm_ext.ops._backend import dl, stream_of

CANONICAL_NAN_BITS = {torch.float16: 0x7E00, torch.bfloat16: 0x7FC0, torch.float32: 0x7FC00000}
BITS_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def sequential_scatter(x, index, delta, weight):
    """y = x, then for k = 0, 1, ...: y[index[k]] += weight[k] * delta[k], product and sum each
    rounded in the accumulation type (no FMA), narrowed once at the end. Vectorized over rows:
    round r adds every row's r-th update (a stable sort gives each update its round)."""
    accumulate = accumulate_dtype(delta.dtype)
    y = x.to(accumulate).clone()
    order = torch.sort(index, stable=True).indices
    sorted_rows = index[order]
    starts = torch.ones_like(sorted_rows, dtype=torch.bool)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    positions = torch.arange(index.numel())
    group_start = torch.where(starts, positions, 0).cummax(0).values
    rounds = torch.empty_like(index)
    rounds[order] = positions - group_start
    by_round = torch.sort(rounds, stable=True).indices.split(rounds.bincount().tolist())
    for ks in by_round:
        update = delta[ks].to(accumulate)
        if weight is not None:
            update = weight[ks].to(accumulate)[:, None] * update
        y[index[ks]] = y[index[ks]] + update
    return y.to(x.dtype)


def bits(tensor):
    tensor = tensor.detach().cpu().contiguous()
    return tensor.view(BITS_VIEW[tensor.dtype]) if tensor.dtype in BITS_VIEW else tensor


def repeat_inputs(rows, count, dim, dtype, device, seed, weighted=True):
    x = random_rows(rows, dim, dtype, seed)
    index = repeating_index(rows, count, seed + 1)
    delta = random_rows(count, dim, dtype, seed + 2)
    weight = None
    if weighted:
        weight = torch.rand(count, generator=torch.Generator().manual_seed(seed + 3)) * 2
        weight = weight.to(accumulate_dtype(dtype))
    return [None if t is None else t.to(device) for t in (x, index, delta, weight)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rows,count,dim", [(1, 300, 7), (7, 4000, 64), (500, 3000, 33)])
@pytest.mark.parametrize("weighted", [False, True], ids=["no_weight", "weight"])
def test_many_repeats_sum_bitwise_in_index_order(device, dtype, rows, count, dim, weighted):
    x, index, delta, weight = repeat_inputs(rows, count, dim, dtype, device, seed=rows + dim)
    assert index.cpu().bincount().max() > 10, "the test needs rows with many updates"
    y = ops.scatter_add_rows(x, index, delta, weight)
    cpu = [None if t is None else t.cpu() for t in (x, index, delta, weight)]
    assert torch.equal(bits(y), bits(reference.scatter_add_rows(*cpu)))
    assert torch.equal(bits(y), bits(sequential_scatter(*cpu)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_backward_with_repeats_sums_in_index_order(device, dtype):
    x, index, grad_out, _ = repeat_inputs(9, 2000, 40, dtype, device, seed=3, weighted=False)
    x.requires_grad_()
    (grad_x,) = torch.autograd.grad(ops.gather_rows(x, index), x, grad_out)
    zeros = torch.zeros(x.shape, dtype=dtype)
    assert torch.equal(
        bits(grad_x), bits(sequential_scatter(zeros, index.cpu(), grad_out.cpu(), None))
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "rows,count,dim",
    [(100_000, 200_000, 8), (8, 100_000, 256)],
    ids=["many_rows_twice", "few_rows_often"],
)
def test_repeat_cost_is_linear(device, rows, count, dim):
    """Before the updates were bucketed, every repeated row rescanned the whole index (on CUDA
    every vector of it): the first case took about 1e10 index loads. Now it is a few passes."""
    x, index, delta, weight = repeat_inputs(rows, count, dim, torch.bfloat16, device, seed=11)
    y = ops.scatter_add_rows(x, index, delta, weight)
    cpu = [t.cpu() for t in (x, index, delta, weight)]
    assert torch.equal(bits(y), bits(sequential_scatter(*cpu)))


def test_workspace_links_each_rows_updates_in_index_order():
    """The workspace after a scatter with repeats (routing.h, "scatter workspace"): each row's
    first update encoded as -3 - k, each update's successor in its row, -1 after the last."""
    x, index, delta, _ = repeat_inputs(10, 40, 8, torch.float32, "cpu", seed=12, weighted=False)
    y, status = torch.empty_like(x), torch.empty(1, dtype=torch.int32)
    row_source = torch.empty(10, dtype=torch.int64)
    next_update = torch.empty(40, dtype=torch.int64)
    _C.routing_scatter(
        dl(x), dl(index), dl(delta), None, dl(y), dl(row_source), dl(next_update), dl(status),
        False, stream_of(x),
    )  # fmt: skip
    assert status.tolist() == [2]
    for row in range(10):
        updates = (index == row).nonzero().flatten().tolist()
        if not updates:
            assert row_source[row] == -1
            continue
        assert row_source[row] == -3 - updates[0]
        chain = [updates[0]]
        while next_update[chain[-1]] != -1:
            chain.append(int(next_update[chain[-1]]))
        assert chain == updates


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("repeats", [False, True], ids=["unique", "repeated"])
def test_nan_narrows_to_one_canonical_pattern(device, dtype, repeats):
    """NaN of any sign and payload, in x, delta or weight, or made by inf * 0 and inf - inf (x86
    makes a negative NaN there, the GPU a positive one): every NaN written by arithmetic is the
    dtype's canonical NaN (float16 0x7e00, bfloat16 0x7fc0, float32 0x7fc00000)."""
    x, _, delta, weight = repeat_inputs(24, 24, 9, dtype, "cpu", seed=13)
    index = torch.cat([torch.arange(8), torch.arange(8), torch.arange(8, 16)]) if repeats else None
    index = (
        torch.randperm(24, generator=torch.Generator().manual_seed(14)) if index is None else index
    )
    payloads = torch.tensor([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FFFFFFF])
    nans = payloads.to(torch.int32).view(torch.float32)
    x[index[0], :5] = nans.to(dtype)
    delta[1, :5] = nans.to(dtype)
    delta[2, :] = -math.nan
    weight[3] = nans[1]
    weight[4], delta[4, 0] = math.inf, 0.0  # inf * 0
    x[index[5], 0], delta[5, 0], weight[5] = -math.inf, 1.0, math.inf  # -inf + inf
    tensors = [t.to(device) for t in (x, index, delta, weight)]
    leaf = torch.zeros_like(tensors[0]).requires_grad_()
    (grad_leaf,) = torch.autograd.grad(ops.gather_rows(leaf, tensors[1]), leaf, tensors[2])
    touched = torch.zeros(24, dtype=torch.bool)
    touched[index] = True
    # scatter_add_rows, and the backward of gather_rows (a scatter into zeros)
    for y in (ops.scatter_add_rows(*tensors), grad_leaf):
        nan = y.isnan().cpu() & touched[:, None]
        assert nan.sum() >= 10
        nan_bits = sorted({hex(b) for b in bits(y)[nan].tolist()})
        assert nan_bits == [hex(CANONICAL_NAN_BITS[dtype])]
