"""gather_rows and scatter_add_rows (kernels through vidllm_ext.ops) against the reference: bitwise
(the math is the reference's, rounding for rounding), and against a float64 oracle."""

import math

import pytest
import torch
from conftest import DEVICES, gpu_only
from support.helpers import assert_close_to_oracle, poison_like
from support.routing_cases import ROW_DTYPES, random_rows, repeating_index, unique_index

from vidllm_ext import _C, ops, reference
from vidllm_ext.ops._backend import dl, stream_of

# (rows, count, dim): odd sizes, vector-width multiples, empty index, empty rows.
SIZES = [
    (1, 1, 1),
    (7, 3, 7),
    (257, 100, 257),
    (64, 64, 1024),
    (300, 0, 16),
    (0, 0, 8),
    (9, 4, 0),
]


def assert_same(actual, expected):
    """Bitwise equal values (NaN where the expected has NaN), same dtype and shape."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=0, equal_nan=True)


def scatter_inputs(rows, count, dim, dtype, device, seed=0, repeats=False, weight_dtype=None):
    x = random_rows(rows, dim, dtype, seed).to(device)
    make_index = repeating_index if repeats else unique_index
    index = make_index(rows, count, seed + 1).to(device)
    delta = random_rows(count, dim, dtype, seed + 2).to(device)
    weight = None
    if weight_dtype is not None:
        weight = torch.rand(count, generator=torch.Generator().manual_seed(seed + 3)) * 2
        weight = weight.to(weight_dtype).to(device)
    return x, index, delta, weight


def scatter_oracle(x, index, delta, weight):
    """float64 x with float64 w * delta added at index."""
    update = delta.double() if weight is None else weight.double()[:, None] * delta.double()
    return x.double().index_add(0, index, update)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
@pytest.mark.parametrize("rows,count,dim", SIZES)
def test_gather_rows_matches_reference(device, dtype, rows, count, dim):
    x = random_rows(rows, dim, dtype, seed=1).to(device)
    index = (
        repeating_index(max(rows, 1), count, seed=2).to(device)
        if rows
        else x.new_empty(0, dtype=torch.int64)
    )
    assert_same(ops.gather_rows(x, index), reference.gather_rows(x.cpu(), index.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
def test_gather_rows_of_width_zero(device, dtype):
    """torch gives empty rows null data pointers; the CPU kernel passed them to memcpy (undefined
    behaviour even for 0 bytes, an abort under UBSan with halt_on_error). Run this test in a
    sanitizer build to see that defect; in a plain build it checks the result."""
    x = torch.empty(9, 0, dtype=dtype, device=device)
    out = ops.gather_rows(x, torch.tensor([1, 2, 1], device=device))
    assert out.shape == (3, 0) and out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
@pytest.mark.parametrize("rows,count,dim", SIZES)
@pytest.mark.parametrize("weighted", [False, True], ids=["no_weight", "weight"])
def test_scatter_add_rows_matches_reference(device, dtype, rows, count, dim, weighted):
    weight_dtype = (
        (torch.float64 if dtype == torch.float64 else torch.float32) if weighted else None
    )
    inputs = scatter_inputs(rows, count, dim, dtype, device, seed=3, weight_dtype=weight_dtype)
    y = ops.scatter_add_rows(*inputs)
    expected = reference.scatter_add_rows(*(t if t is None else t.cpu() for t in inputs))
    assert_same(y, expected)
    assert_close_to_oracle(
        y, expected, scatter_oracle(*(t if t is None else t.cpu() for t in inputs))
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_scatter_weight_of_another_dtype(device, weight_dtype):
    inputs = scatter_inputs(50, 20, 33, torch.bfloat16, device, seed=4, weight_dtype=weight_dtype)
    expected = reference.scatter_add_rows(*(t.cpu() for t in inputs))
    assert_same(ops.scatter_add_rows(*inputs), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
def test_scatter_repeated_rows_sum_in_index_order(device, dtype):
    weight_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    inputs = scatter_inputs(
        13, 60, 37, dtype, device, seed=5, repeats=True, weight_dtype=weight_dtype
    )
    expected = reference.scatter_add_rows(*(t.cpu() for t in inputs))
    assert_same(ops.scatter_add_rows(*inputs), expected)
    assert (inputs[1].bincount() > 2).any(), "the test needs rows with several updates"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hostile_values_propagate_like_the_reference(device, dtype):
    x, index, delta, _ = scatter_inputs(40, 25, 19, dtype, "cpu", seed=6)
    weight = torch.rand(25) + 0.5
    x[3, 2], x[index[0], 1] = math.nan, math.inf
    delta[1, :] = math.nan
    delta[2, 4], delta[3, 5] = math.inf, -math.inf
    delta[4, :] = 60000.0  # float16: w * 60000 + x overflows to inf, bfloat16 stays finite
    weight[5], weight[6] = math.nan, math.inf
    expected = reference.scatter_add_rows(x, index, delta, weight)
    tensors = [t.to(device) for t in (x, index, delta, weight)]
    assert_same(ops.scatter_add_rows(*tensors), expected)
    assert_same(ops.gather_rows(tensors[0], tensors[1]), reference.gather_rows(x, index))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_matches_torch_over_the_whole_range(device, dtype):
    """With delta = 1, y = narrow(x + w): float32 weights of every exponent (random bit patterns,
    ties, subnormal and overflow boundaries, NaN, inf) narrowed exactly as torch rounds."""
    bits = torch.randint(-(2**31), 2**31 - 1, (20000,), generator=torch.Generator().manual_seed(7))
    special = torch.tensor(
        [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, 65504.0, 65519.99, 65520.0,
         2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-26, 2.0**-133, 3.4e38, 1e-45,
         float("inf"), float("-inf"), float("nan"), -0.0, 0.0],
        dtype=torch.float32,
    )  # fmt: skip
    weight = torch.cat([bits.to(torch.int32).view(torch.float32), special, -special])
    rows = weight.numel()
    index = torch.arange(rows)
    delta = torch.ones(rows, 3, dtype=dtype)
    for x in (torch.zeros(rows, 3, dtype=dtype), random_rows(rows, 3, dtype, seed=17)):
        expected = reference.scatter_add_rows(x, index, delta, weight)
        tensors = [t.to(device) for t in (x, index, delta, weight)]
        assert_same(ops.scatter_add_rows(*tensors), expected)
        if not x.any():  # y = w in dtype: the special values round as torch's .to(dtype)
            assert_same(
                expected[-2 * special.numel() :, 0], torch.cat([special, -special]).to(dtype)
            )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["row_stride", "last_dim_stride", "transposed"])
def test_non_contiguous_rows(device, layout):
    base = random_rows(120, 96, torch.bfloat16, seed=8).to(device)
    if layout == "row_stride":
        x = base[::3]
    elif layout == "last_dim_stride":
        x = base[:40, ::2]
    else:
        x = base[:40, :40].t()
    index = unique_index(x.shape[0], 17, seed=9).to(device)
    delta_base = random_rows(34, 2 * x.shape[1], torch.bfloat16, seed=10).to(device)
    delta = delta_base[::2, ::2]
    weight = torch.rand(34, device=device)[::2]
    expected = reference.scatter_add_rows(x.cpu(), index.cpu(), delta.cpu(), weight.cpu())
    assert_same(ops.scatter_add_rows(x, index, delta, weight), expected)
    assert_same(ops.gather_rows(x, index), reference.gather_rows(x.cpu(), index.cpu()))
    assert_same(ops.gather_rows(x, index.flip(0)[::1]), x.cpu()[index.cpu().flip(0)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ROW_DTYPES)
def test_kernels_write_every_output_element(device, dtype):
    """Outputs poisoned before the call (NaN rows, status -7); no input holds NaN."""
    x, index, delta, _ = scatter_inputs(33, 20, 41, dtype, device, seed=11)
    weight = torch.rand(20, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    weight = weight.to(device)
    status = poison_like(torch.empty(1, dtype=torch.int32, device=device))
    out = poison_like(x.new_empty(20, 41))
    dot = poison_like(weight.new_empty(20))
    _C.routing_gather(
        dl(x), dl(index), dl(weight), dl(delta), dl(dot), dl(out), dl(status), stream_of(x)
    )
    assert status.tolist() == [0] and not out.isnan().any() and not dot.isnan().any()
    y = poison_like(torch.empty_like(x))
    row_source = poison_like(torch.empty(33, dtype=torch.int64, device=device))
    next_update = torch.empty(20, dtype=torch.int64, device=device)
    _C.routing_scatter(
        dl(x), dl(index), dl(delta), dl(weight), dl(y), dl(row_source), dl(next_update),
        dl(status), False, stream_of(x),
    )  # fmt: skip
    assert status.tolist() == [0] and not y.isnan().any()
    expected = torch.full((33,), -1, dtype=torch.int64)
    expected[index.cpu()] = torch.arange(20)
    assert torch.equal(row_source.cpu(), expected)
    y_from_zeros = poison_like(torch.empty_like(x))
    _C.routing_scatter(
        None, dl(index), dl(delta), None, dl(y_from_zeros), dl(row_source), dl(next_update),
        dl(status), False, stream_of(x),
    )  # fmt: skip
    expected = reference.scatter_add_rows(torch.zeros_like(x).cpu(), index.cpu(), delta.cpu())
    assert_same(y_from_zeros, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_status_flags_repeated_rows(device):
    x, index, delta, _ = scatter_inputs(10, 12, 8, torch.float32, device, seed=12, repeats=True)
    status = torch.empty(1, dtype=torch.int32, device=device)
    y = torch.empty_like(x)
    row_source = torch.empty(10, dtype=torch.int64, device=device)
    next_update = torch.empty(12, dtype=torch.int64, device=device)
    _C.routing_scatter(
        dl(x), dl(index), dl(delta), None, dl(y), dl(row_source), dl(next_update), dl(status),
        False, stream_of(x),
    )  # fmt: skip
    assert status.tolist() == [2]
    counts = index.cpu().bincount(minlength=10)
    assert torch.equal(row_source.cpu() <= -3, counts > 0), "linked: every updated row"
    assert torch.equal(row_source.cpu() == -1, counts == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check_index", [True, False])
def test_repeated_rows_raise_only_when_checked(device, check_index, monkeypatch):
    inputs = scatter_inputs(10, 12, 8, torch.float32, device, seed=13, repeats=True)
    if check_index:
        with pytest.raises(ValueError, match="index: expected every row at most once"):
            ops.scatter_add_rows(*inputs, check_index=True)
        monkeypatch.setenv("VIDLLM_CHECK_INDEX", "1")
        with pytest.raises(ValueError, match="index: expected every row at most once"):
            ops.scatter_add_rows(*inputs)
        with pytest.raises(ValueError, match="index: expected every row at most once"):
            reference.scatter_add_rows(
                *(t if t is None else t.cpu() for t in inputs), check_index=True
            )
        assert ops.scatter_add_rows(*inputs, check_index=False).shape == (10, 8)
    else:
        ops.scatter_add_rows(*inputs)
        ops.gather_rows(inputs[0], inputs[1], check_index=True)  # gather allows repeats


def test_out_of_range_index_raises_on_the_cpu():
    x, index, delta, _ = scatter_inputs(10, 4, 8, torch.float32, "cpu", seed=14)
    for bad in (10, -1, 2**40):
        index[2] = bad
        message = rf"index: expected entries in \[0, 10\) .*got index\[2\] = {bad}"
        with pytest.raises(ValueError, match=message):
            ops.gather_rows(x, index)
        with pytest.raises(ValueError, match=message):
            ops.scatter_add_rows(x, index, delta)
        for impl in (ops, reference):
            with pytest.raises(ValueError, match=message):
                impl.scatter_add_rows(x, index, delta, check_index=False)


@pytest.mark.cuda
@gpu_only
def test_out_of_range_index_on_cuda_poisons_or_raises():
    x, index, delta, _ = scatter_inputs(10, 4, 8, torch.float32, "cuda", seed=15)
    index[1] = 10
    out = ops.gather_rows(x, index, check_index=False)
    assert out[1].isnan().all() and torch.equal(out[[0, 2, 3]], x[index[[0, 2, 3]]])
    assert ops.scatter_add_rows(x, index, delta, check_index=False).isnan().all()
    with pytest.raises(ValueError, match=r"got index\[1\] = 10"):
        ops.gather_rows(x, index, check_index=True)
    with pytest.raises(ValueError, match=r"got index\[1\] = 10"):
        ops.scatter_add_rows(x, index, delta, check_index=True)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_deterministic(device):
    inputs = scatter_inputs(4000, 3000, 1029, torch.bfloat16, device, seed=16, repeats=True)
    first = ops.scatter_add_rows(*inputs).view(torch.int16)
    gathered = ops.gather_rows(inputs[0], inputs[1]).view(torch.int16)
    for _ in range(2):
        assert torch.equal(ops.scatter_add_rows(*inputs).view(torch.int16), first)
        assert torch.equal(ops.gather_rows(inputs[0], inputs[1]).view(torch.int16), gathered)


def test_topk_refuses_more_than_2_31_minus_1_scores():
    """README's Limits: a zero-stride view of 2^31 scores, so nothing that large is allocated."""
    scores = torch.zeros(1).expand(2**31)
    offsets = torch.tensor([0, 2**31])
    message = r"scores: at most 2\^31 - 1 tokens are supported, got shape \[2147483648\]"
    with pytest.raises(ValueError, match=message):
        ops.topk_per_segment(scores, offsets, 0.5)
    with pytest.raises(ValueError, match=message):
        ops.topk_per_segment_into(scores, offsets, 0.5, torch.empty(4, dtype=torch.int64))
