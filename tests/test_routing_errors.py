"""Every bad argument to the routing ops gets a clear Python exception, from the ops, the
reference and _C itself."""

import numpy as np
import pytest
import torch

from vidllm_ext import _C, ops, reference
from vidllm_ext.ops._backend import dl

IMPLS = [ops, reference]
ops_and_reference = pytest.mark.parametrize("impl", IMPLS, ids=["ops", "reference"])
SCORES = torch.randn(10)
OFFSETS = torch.tensor([0, 4, 10])
X = torch.randn(8, 5)
INDEX = torch.tensor([1, 6, 3])
DELTA = torch.randn(3, 5)
WEIGHT = torch.rand(3)


def bad_arguments(*cases):
    """Parametrizes a test by (kwargs, error, message): arguments to override, what they raise."""
    return pytest.mark.parametrize("kwargs,error,message", cases)


def assert_rejects(function, args, kwargs, error, message):
    """``function(**args)`` with ``kwargs`` overriding ``args`` raises ``error`` matching
    ``message``."""
    with pytest.raises(error, match=message):
        function(**{**args, **kwargs})


@ops_and_reference
@bad_arguments(
    (dict(scores=torch.randn(2, 5)), ValueError, r"scores: expected a 1-D tensor \[tokens\]"),
    (dict(scores=torch.arange(10)), TypeError, "scores: expected dtype float32, float16"),
    (dict(scores=torch.randn(10).double()), TypeError, "scores: expected dtype float32"),
    (dict(scores=[0.5, 0.2]), TypeError, "scores: expected a torch.Tensor"),
    (dict(segment_offsets=OFFSETS.int()), TypeError, "segment_offsets: expected dtype"),
    (dict(segment_offsets=OFFSETS[None]), ValueError, "segment_offsets: expected a 1-D"),
    (dict(segment_offsets=OFFSETS[:0]), ValueError, "at least one entry"),
    (dict(segment_offsets=[0, 10]), TypeError, "segment_offsets: expected a torch.Tensor"),
    (dict(segment_offsets=torch.tensor([0, 6, 4, 10])), ValueError, r"\[1\] = 6 > .*\[2\] = 4"),
    (dict(segment_offsets=torch.tensor([1, 4, 10])), ValueError, r"segment_offsets\[0\] = 1"),
    (dict(segment_offsets=torch.tensor([0, 4, 9])), ValueError, r"segment_offsets\[2\] = 9"),
    (dict(segment_offsets=torch.tensor([0, 4, 11])), ValueError, "run from 0 to 10"),
    (dict(segment_offsets=torch.tensor([-2, 4, 10])), ValueError, "run from 0 to 10"),
    (dict(keep_ratio=1.5), ValueError, r"keep_ratio: expected a fraction in \[0, 1\]"),
    (dict(keep_ratio=-0.1), ValueError, r"keep_ratio: expected a fraction in \[0, 1\]"),
    (dict(keep_ratio=float("nan")), ValueError, "keep_ratio: expected a fraction"),
    (dict(keep_ratio="0.2"), TypeError, "keep_ratio: expected a Python float"),
    (dict(keep_ratio=True), TypeError, "keep_ratio: expected a Python float"),
)
def test_bad_topk_arguments(impl, kwargs, error, message):
    args = dict(scores=SCORES, segment_offsets=OFFSETS, keep_ratio=0.5)
    assert_rejects(impl.topk_per_segment, args, kwargs, error, message)


@bad_arguments(
    (dict(index=torch.empty(4, dtype=torch.int32)), TypeError, "index: expected dtype"),
    (dict(index=torch.empty(2, 4, dtype=torch.int64)), ValueError, "index: expected a 1-D"),
    (dict(index=torch.empty(8, dtype=torch.int64)[::2]), ValueError, "index: expected a cont"),
    (
        dict(total=torch.empty(2, dtype=torch.int64)),
        ValueError,
        r"total: expected a 1-D .*\[1\]",
    ),
    (dict(total=torch.empty(1)), TypeError, "total: expected dtype torch.int64"),
    (dict(segment_offsets=torch.tensor([0, 6, 4, 10])), ValueError, "without decreasing"),
)
def test_bad_topk_into_arguments(kwargs, error, message):
    args = dict(
        scores=SCORES,
        segment_offsets=OFFSETS,
        keep_ratio=0.5,
        index=torch.empty(4, dtype=torch.int64),
        total=None,
    )
    assert_rejects(ops.topk_per_segment_into, args, kwargs, error, message)


@ops_and_reference
@bad_arguments(
    (dict(x=torch.randn(8)), ValueError, r"x: expected a 2-D tensor \[rows, dim\]"),
    (dict(x=torch.ones(8, 5, dtype=torch.int32)), TypeError, "x: expected dtype float32"),
    (dict(x="rows"), TypeError, "x: expected a torch.Tensor"),
    (dict(index=INDEX.int()), TypeError, "index: expected dtype torch.int64"),
    (dict(index=INDEX[None]), ValueError, r"index: expected a 1-D tensor \[count\]"),
    (dict(index=torch.tensor([1, 8, 3])), ValueError, r"index\[1\] = 8"),
    (dict(index=torch.tensor([1, -1, 3])), ValueError, r"index\[1\] = -1"),
    (dict(delta=torch.randn(2, 5)), ValueError, r"delta: expected shape \[3, 5\]"),
    (dict(delta=torch.randn(3, 4)), ValueError, r"delta: expected shape \[3, 5\]"),
    (dict(delta=torch.randn(3, 5).double()), TypeError, "delta: expected dtype torch.float32"),
    (dict(delta=torch.randn(15)), ValueError, r"delta: expected a 2-D tensor"),
    (dict(weight=torch.rand(4)), ValueError, r"weight: expected shape \[3\]"),
    (dict(weight=torch.rand(3, 1)), ValueError, r"weight: expected shape \[3\]"),
    (dict(weight=torch.ones(3, dtype=torch.int64)), TypeError, "weight: expected dtype"),
    (dict(weight=[1.0, 1.0, 1.0]), TypeError, "weight: expected a torch.Tensor"),
    (dict(check_index="yes"), TypeError, "check_index: expected a bool or None"),
    (dict(index=torch.tensor([1, 3, 1]), check_index=True), ValueError, "at most once"),
)
def test_bad_scatter_arguments(impl, kwargs, error, message):
    args = dict(x=X, index=INDEX, delta=DELTA, weight=WEIGHT, check_index=None)
    assert_rejects(impl.scatter_add_rows, args, kwargs, error, message)


@ops_and_reference
@bad_arguments(
    (dict(x=torch.randn(8)), ValueError, r"x: expected a 2-D tensor \[rows, dim\]"),
    (dict(x=torch.ones(8, 5, dtype=torch.bool)), TypeError, "x: expected dtype float32"),
    (dict(index=INDEX.float()), TypeError, "index: expected dtype torch.int64"),
    (dict(index=torch.tensor([0, 9])), ValueError, r"expected entries in \[0, 8\)"),
    (dict(index=np.array([0, 1])), TypeError, "index: expected a torch.Tensor"),
)
def test_bad_gather_arguments(impl, kwargs, error, message):
    args = dict(x=X, index=INDEX)
    assert_rejects(impl.gather_rows, args, kwargs, error, message)


@ops_and_reference
@bad_arguments(
    (dict(hidden=torch.randn(6)), ValueError, r"hidden: expected a 2-D tensor \[tokens, dim\]"),
    (dict(scores=torch.randn(5)), ValueError, r"scores: expected shape \[6\]"),
    (dict(scores=torch.ones(6, dtype=torch.int64)), TypeError, "scores: expected dtype"),
    (dict(is_video=torch.ones(6)), TypeError, "is_video: expected dtype torch.bool"),
    (dict(is_video=torch.ones(5, dtype=torch.bool)), ValueError, r"is_video: expected shape"),
    (dict(segment_offsets=torch.tensor([0, 2])), ValueError, "run from 0 to 3"),
    (dict(segment_offsets=torch.tensor([0, 2.0])), TypeError, "segment_offsets: expected dt"),
    (dict(keep_ratio=2.0), ValueError, "keep_ratio: expected a fraction"),
    (dict(gate="sigmoid"), ValueError, "gate: expected one of 'sigmoid2', 'raw', 'none'"),
)
def test_bad_routed_update_arguments(impl, kwargs, error, message):
    args = dict(
        hidden=torch.randn(6, 4),
        scores=torch.randn(6),
        is_video=torch.tensor([False, True, True, False, True, False]),
        segment_offsets=torch.tensor([0, 2, 3]),
        keep_ratio=0.5,
        layer_fn=lambda h, index: h * 2,
        gate="sigmoid2",
    )
    assert_rejects(impl.routed_update, args, kwargs, error, message)


def test_binding_checks_arguments_itself():
    slot_start = torch.empty(2, dtype=torch.int64)
    total = torch.empty(1, dtype=torch.int64)
    status = torch.empty(1, dtype=torch.int32)
    out = torch.empty(3, 5)
    with pytest.raises(ValueError, match="keep_ratio: expected a fraction"):
        _C.routing_topk(dl(SCORES), dl(OFFSETS), 1.5, dl(slot_start), dl(total), None)
    with pytest.raises(ValueError, match=r"slot_start: expected size 2 in dimension 0"):
        _C.routing_topk(dl(SCORES), dl(OFFSETS), 0.5, dl(total), dl(total), None)
    with pytest.raises(TypeError, match="segment_offsets: expected dtype int64, got int32"):
        _C.routing_topk(dl(SCORES), dl(OFFSETS.int()), 0.5, dl(slot_start), dl(total), None)
    with pytest.raises(ValueError, match="without decreasing"):
        bad = torch.tensor([0, 11, 10])
        _C.routing_topk(dl(SCORES), dl(bad), 0.5, dl(slot_start), dl(total), None)
    with pytest.raises(TypeError, match="scores: expected a tensor"):
        _C.routing_topk("scores", dl(OFFSETS), 0.5, dl(slot_start), dl(total), None)
    with pytest.raises(TypeError, match="out: expected dtype float32 like source, got float64"):
        _C.routing_gather(dl(X), dl(INDEX), None, None, None, dl(out.double()), dl(status))
    with pytest.raises(ValueError, match="out: expected a contiguous tensor"):
        strided = torch.empty(6, 5)[::2]
        _C.routing_gather(dl(X), dl(INDEX), None, None, None, dl(strided), dl(status))
    with pytest.raises(ValueError, match="source: expected the last dimension to be contiguous"):
        _C.routing_gather(dl(X.t()), dl(INDEX), None, None, None, dl(out), dl(status))
    with pytest.raises(ValueError, match="other and dot: expected both"):
        _C.routing_gather(dl(X), dl(INDEX), None, dl(DELTA), None, dl(out), dl(status))
    with pytest.raises(TypeError, match="weight: expected dtype float32, got float16"):
        _C.routing_gather(dl(X), dl(INDEX), dl(WEIGHT.half()), None, None, dl(out), dl(status))
    with pytest.raises(TypeError, match=r"weight: expected dtype float64 .*got float32"):
        rows64 = X.double()
        _C.routing_gather(
            dl(rows64), dl(INDEX), dl(WEIGHT), None, None, dl(out.double()), dl(status)
        )
    with pytest.raises(ValueError, match=r"index: expected entries in \[0, 8\)"):
        _C.routing_gather(dl(X), dl(torch.tensor([0, 8, 1])), None, None, None, dl(out), dl(status))
    with pytest.raises(TypeError, match="status: expected dtype int32"):
        _C.routing_gather(dl(X), dl(INDEX), None, None, None, dl(out), dl(total))
    y = torch.empty_like(X)
    row_source = torch.empty(8, dtype=torch.int64)
    next_update = torch.empty(3, dtype=torch.int64)

    def scatter(x=X, index=INDEX, delta=DELTA, rows=row_source, updates=next_update, check=False):
        """_C.routing_scatter into y with these arguments, the others valid."""
        _C.routing_scatter(
            dl(x), dl(index), dl(delta), None, dl(y), dl(rows), dl(updates), dl(status), check
        )

    with pytest.raises(ValueError, match=r"row_source: expected size 8 in dimension 0"):
        scatter(rows=row_source[:4])
    with pytest.raises(ValueError, match=r"next_update: expected size 3 in dimension 0"):
        scatter(updates=next_update[:2])
    with pytest.raises(ValueError, match=r"delta: expected size 3 in dimension 0"):
        scatter(delta=DELTA[:2])
    with pytest.raises(ValueError, match=r"index: expected every row at most once"):
        repeated = torch.tensor([1, 2, 1])
        scatter(index=repeated, check=True)
    with pytest.raises(TypeError, match="x: expected dtype float32 like y, got float16"):
        scatter(x=X.half())


@ops_and_reference
def test_bad_selection_arguments(impl):
    is_video = torch.tensor([False, True, True, True])
    offsets = torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match=r"is_video: expected shape \[3\]"):
        impl.select_routed_tokens(torch.randn(3), is_video, offsets, 0.5)
    with pytest.raises(ValueError, match=r"scores: expected a 1-D tensor"):
        impl.select_routed_tokens(torch.randn(4, 1), is_video, offsets, 0.5)
    with pytest.raises(ValueError, match="run from 0 to 3"):
        impl.select_routed_tokens(torch.randn(4), is_video, torch.tensor([0, 2]), 0.5)
    with pytest.raises(ValueError, match="keep_ratio: expected a fraction"):
        impl.select_routed_tokens(torch.randn(4), is_video, offsets, -1.0)
