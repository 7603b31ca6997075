"""Every bad argument of the merge ops gets a clear Python exception, from the ops, the reference
and vidllm_ext._C itself; kernels write every output element and survive malformed plans."""

import numpy as np
import pytest
import torch
from conftest import DEVICES, gpu_only
from support.helpers import poison_like

from vidllm_ext import _C, ops, reference
from vidllm_ext.contracts.token_merge import MergePlan
from vidllm_ext.ops._backend import dl, stream_of

IMPLS = [ops, reference]
IDS = ["ops", "reference"]
METRIC = torch.randn(2, 9, 8)
X = torch.randn(2, 9, 16)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(metric=torch.randn(9, 8)), ValueError, "metric: expected a 3-D tensor"),
        (dict(metric=torch.ones(2, 9, 8, dtype=torch.int64)), TypeError, "metric: expected dtype"),
        (dict(metric=torch.randn(2, 9, 0)), ValueError, "metric: expected a non-empty feature"),
        (dict(metric=[[1.0]]), TypeError, "metric: expected a torch.Tensor"),
        (dict(r=-1), ValueError, "r: expected an int >= 0, got -1"),
        (dict(r=1.5), TypeError, "r: expected an int, got float"),
        (dict(r=True), TypeError, "r: expected an int, got bool"),
        (dict(protected=-1), ValueError, "protected: expected an int >= 0"),
        (dict(protected=10), ValueError, "protected: expected at most the 9 tokens of metric"),
    ],
)
def test_bad_matching_arguments(impl, kwargs, error, message):
    args = dict(metric=METRIC, r=3, protected=0)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        impl.bipartite_soft_matching(args["metric"], args["r"], protected=args["protected"])


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(x=torch.randn(2, 8, 16)), ValueError, r"x: expected \[batch, tokens\] = \[2, 9\]"),
        (dict(x=torch.randn(3, 9, 16)), ValueError, r"x: expected \[batch, tokens\] = \[2, 9\]"),
        (dict(x=torch.randn(9, 16)), ValueError, "x: expected a 3-D tensor"),
        (dict(x=torch.ones(2, 9, 16, dtype=torch.int32)), TypeError, "x: expected dtype"),
        (dict(x=torch.randn(2, 9, 0)), ValueError, "x: expected a non-empty feature"),
        (dict(size=torch.ones(2, 8)), ValueError, r"size: expected shape \[2, 9\]"),
        (dict(size=torch.ones(2, 9, dtype=torch.int64)), TypeError, "size: expected dtype"),
        (dict(size=[1.0]), TypeError, "size: expected a torch.Tensor"),
        (dict(size=torch.ones(2, 9, requires_grad=True)), ValueError, "size: gradients"),
        (dict(plan=(1, 2)), TypeError, "plan: expected a MergePlan, got tuple"),
    ],
)
def test_bad_merge_arguments(impl, kwargs, error, message):
    args = dict(plan=impl.bipartite_soft_matching(METRIC, 3), x=X, size=None)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        impl.merge_wavg(args["plan"], args["x"], args["size"])


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_bad_unmerge_arguments(impl):
    plan = impl.bipartite_soft_matching(METRIC, 3)
    with pytest.raises(ValueError, match=r"x_merged: expected \[batch, tokens\] = \[2, 6\]"):
        impl.unmerge(plan, X)
    with pytest.raises(TypeError, match="plan: expected a MergePlan"):
        impl.unmerge(None, X[:, :6])


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(tokens=torch.randn(4, 16)), ValueError, "tokens: expected a 3-D tensor"),
        (dict(tokens=torch.ones(2, 4, 16, dtype=torch.int64)), TypeError, "tokens: expected"),
        (dict(metric_chunks=3), ValueError, "metric_chunks: expected a divisor of the feature"),
        (dict(metric_chunks=0), ValueError, "metric_chunks: expected an int >= 1"),
        (dict(frames_per_segment=0), ValueError, "frames_per_segment: expected an int >= 1"),
        (dict(tokens_per_segment=0), ValueError, "tokens_per_segment: expected an int >= 1"),
        (dict(frames_per_segment=2.0), TypeError, "frames_per_segment: expected an int"),
    ],
)
def test_bad_hierarchical_arguments(impl, kwargs, error, message):
    args = dict(tokens=torch.randn(6, 4, 16), frames_per_segment=2, tokens_per_segment=3)
    args["metric_chunks"] = 4
    args.update(kwargs)
    tokens = args.pop("tokens")
    with pytest.raises(error, match=message):
        impl.hierarchical_merge(tokens, **args)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (
            dict(segment_offsets=[0, 5, 9]),
            ValueError,
            r"offsets from 0 to the 10 tokens, got 0 \.\. 9",
        ),
        (dict(segment_offsets=[1, 5, 10]), ValueError, "offsets from 0 to the 10 tokens, got 1"),
        (dict(segment_offsets=[0, 6, 4, 10]), ValueError, "non-decreasing offsets, got 4 after 6"),
        (dict(segment_offsets=[]), ValueError, "expected \\[segments \\+ 1\\] offsets"),
        (dict(segment_offsets=[0, 5.0, 10]), TypeError, "segment_offsets: expected ints"),
        (dict(segment_offsets=[0, True, 10]), TypeError, "segment_offsets: expected ints"),
        (dict(segment_offsets="0,10"), TypeError, "segment_offsets: expected a CPU int64 tensor"),
        (dict(segment_offsets=torch.tensor([0, 10], dtype=torch.int32)), TypeError, "int64"),
        (dict(segment_offsets=torch.tensor([[0, 10]])), ValueError, "expected a 1-D tensor"),
        (dict(tokens=torch.randn(2, 5, 16)), ValueError, "expected a 2-D tensor \\[total tokens"),
        (dict(frames_per_segment=2), ValueError, "frames_per_segment: not used with"),
        (dict(metric_chunks=3), ValueError, "metric_chunks: expected a divisor"),
    ],
)
def test_bad_segment_offsets(impl, kwargs, error, message):
    args = dict(tokens=torch.randn(10, 16), segment_offsets=[0, 4, 4, 10], metric_chunks=4)
    args.update(kwargs)
    tokens = args.pop("tokens")
    with pytest.raises(error, match=message):
        impl.hierarchical_merge(tokens, **args)


@pytest.mark.cuda
@gpu_only
def test_cuda_segment_offsets_are_refused():
    tokens = torch.randn(10, 16, device="cuda")
    with pytest.raises(ValueError, match=r"segment_offsets: expected a CPU tensor .*\.cpu\(\)"):
        ops.hierarchical_merge(tokens, segment_offsets=torch.tensor([0, 10], device="cuda"))


@pytest.mark.cuda
@gpu_only
def test_device_mismatch_is_a_value_error():
    plan = ops.bipartite_soft_matching(METRIC.cuda(), 3)
    with pytest.raises(ValueError, match="x: expected a tensor on cuda:0 like the plan"):
        ops.merge_wavg(plan, X)
    with pytest.raises(ValueError, match="size: expected a tensor on cuda:0 like x"):
        ops.merge_wavg(plan, X.cuda(), torch.ones(2, 9))


def plan_buffers(batch, tokens, r, a_size):
    long = dict(dtype=torch.int64)
    return dict(
        score=torch.empty(batch, a_size),
        partner=torch.empty(batch, a_size, **long),
        slot=torch.empty(batch, tokens, **long),
        kept_index=torch.empty(batch, tokens - r, **long),
        source_offsets=torch.empty(batch, tokens - r + 1, **long),
        source_index=torch.empty(batch, r, **long),
        cursor=torch.empty(batch, tokens - r, **long),
    )


def test_binding_checks_arguments_itself():
    b = plan_buffers(2, 9, 3, 5)
    with pytest.raises(ValueError, match="metric: expected a 3-D tensor"):
        _C.token_merge_match(torch.randn(9, 8), b["partner"], b["score"], 9, 0)
    with pytest.raises(ValueError, match=r"partner: expected size 5 in dimension 1"):
        _C.token_merge_match(METRIC, b["partner"][:, :4].contiguous(), b["score"], 9, 0)
    with pytest.raises(TypeError, match="score: expected dtype float32, got float64"):
        _C.token_merge_match(METRIC, b["partner"], b["score"].double(), 9, 0)
    with pytest.raises(ValueError, match=r"last_tokens: expected the last row's token count"):
        _C.token_merge_match(METRIC, b["partner"], b["score"], 10, 0)
    with pytest.raises(ValueError, match=r"r: expected a merge count per row in \[0, 4\], got 5"):
        _C.token_merge_plan(*plan_buffers(2, 9, 5, 5).values(), 9, 0, 5, 5)
    with pytest.raises(TypeError, match="slot: expected dtype int64, got int32"):
        buffers = dict(b, slot=b["slot"].int())
        _C.token_merge_plan(*buffers.values(), 9, 0, 3, 3)
    with pytest.raises(ValueError, match="chunks: expected a divisor of the feature dimension"):
        _C.token_merge_metric(X, torch.empty(2, 9, 5), 2, 9, 9, 3)
    with pytest.raises(TypeError, match="x: expected a tensor"):
        _C.token_merge_metric("x", torch.empty(2, 9, 4), 2, 9, 9, 4)
    plan = ops.bipartite_soft_matching(METRIC, 3)
    merge_args = [plan.kept_index, plan.source_offsets, plan.source_index]
    with pytest.raises(TypeError, match="out: expected dtype float32 like x, got float16"):
        _C.token_merge_wavg(
            X, None, None, *merge_args, torch.empty(2, 6, 16).half(), torch.empty(2, 6), None,
            9, 9, 3,
        )  # fmt: skip
    with pytest.raises(ValueError, match="index_out: expected a tensor when index is given"):
        _C.token_merge_wavg(
            X, None, torch.zeros(2, 9, dtype=torch.int64), *merge_args, torch.empty(2, 6, 16),
            torch.empty(2, 6), None, 9, 9, 3,
        )  # fmt: skip
    with pytest.raises(ValueError, match="x_merged: expected at least one token per row"):
        _C.token_merge_unmerge(torch.empty(2, 0, 16), plan.slot, torch.empty(2, 9, 16))


def test_binding_accepts_numpy_arrays():
    metric = np.random.default_rng(0).standard_normal((2, 9, 8)).astype(np.float32)
    partner = np.full((2, 5), -7, dtype=np.int64)
    score = np.full((2, 5), np.nan, dtype=np.float32)
    _C.token_merge_match(metric, partner, score, 9, 0)
    expected = reference.bipartite_soft_matching(torch.from_numpy(metric), 3)
    assert torch.equal(torch.from_numpy(partner), expected.partner)


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_write_every_output_element(device):
    """Outputs poisoned before the call: NaN floats, -7 integers."""
    metric = torch.randn(3, 37, 12, device=device)
    x = torch.randn(3, 37, 20, device=device)
    stream = stream_of(x)
    b = {k: poison_like(v.to(device)) for k, v in plan_buffers(3, 37, 11, 18).items()}
    _C.token_merge_match(dl(metric), dl(b["partner"]), dl(b["score"]), 37, 1, stream)
    assert not b["score"].isnan().any() and (b["partner"] >= 0).all()
    names = ["score", "partner", "slot", "kept_index", "source_offsets", "source_index", "cursor"]
    _C.token_merge_plan(*(dl(b[name]) for name in names), 37, 1, 11, 11, stream)
    for name in names[2:6]:
        assert (b[name] >= 0).all(), name
    out, size_out = poison_like(torch.empty(3, 26, 20, device=device)), torch.empty(3, 26)
    size_out = poison_like(size_out.to(device))
    index = torch.arange(3 * 37, device=device).view(3, 37)
    index_out = poison_like(torch.empty(3, 26, dtype=torch.int64, device=device))
    merge = [b["kept_index"], b["source_offsets"], b["source_index"]]
    _C.token_merge_wavg(
        dl(x), None, dl(index), *map(dl, merge), dl(out), dl(size_out), dl(index_out),
        37, 37, 11, stream,
    )  # fmt: skip
    assert not out.isnan().any() and not size_out.isnan().any() and (index_out >= 0).all()
    restored = poison_like(torch.empty(3, 37, 20, device=device))
    _C.token_merge_unmerge(dl(out), dl(b["slot"]), dl(restored), stream)
    assert not restored.isnan().any()
    metric_out = poison_like(torch.empty(3, 37, 5, device=device))
    _C.token_merge_metric(dl(x), dl(metric_out), 3, 37, 37, 4, stream)
    assert not metric_out.isnan().any()


@pytest.mark.parametrize("device", DEVICES)
def test_malformed_plan_cannot_reach_outside_its_rows(device, monkeypatch):
    """A plan assembled by hand with indices out of range, with the structure checks off:
    clamped, never a crash."""
    monkeypatch.setenv("VIDLLM_CHECK_STRUCTURES", "0")
    x = torch.randn(2, 9, 16, device=device)
    plan = ops.bipartite_soft_matching(torch.randn(2, 9, 8, device=device), 3)
    garbage = torch.tensor([[-5, 10**9, 3, 2, 1, 0], [7, -1, 10**12, 5, 5, 5]], device=device)
    bad = plan._replace(
        kept_index=garbage,
        source_offsets=torch.tensor([[0, 9, 2, -4, 3, 3, 1]] * 2, device=device),
        source_index=garbage[:, :3].flip(1),
        slot=torch.full((2, 9), 10**6, device=device),
    )
    assert isinstance(bad, MergePlan)
    merged, size = ops.merge_wavg(bad, x)
    restored = ops.unmerge(bad, merged)
    assert merged.isfinite().all() and size.isfinite().all() and restored.isfinite().all()


def test_hierarchical_binding_checks_arguments_itself():
    tokens = torch.randn(50, 8)  # segments of 20, 0, 20 and 10 tokens
    offsets = torch.tensor([0, 20, 20, 40, 50])
    device_offsets = torch.stack([offsets, torch.tensor([0, 6, 6, 12, 18])])
    knobs = (2, 6)
    bytes_needed = _C.token_merge_hierarchical_workspace(tokens, offsets, *knobs)
    outputs = [torch.empty(18, 8), torch.empty(18), torch.empty(18, dtype=torch.int64)]
    workspace = torch.empty(bytes_needed, dtype=torch.uint8)
    _C.token_merge_hierarchical(tokens, offsets, device_offsets, workspace, *outputs, *knobs)
    assert torch.equal(outputs[1], reference.hierarchical_merge(
        tokens, segment_offsets=offsets, tokens_per_segment=6, metric_chunks=2
    ).sizes)  # fmt: skip
    run = lambda *args: _C.token_merge_hierarchical(tokens, *args, *knobs)  # noqa: E731
    with pytest.raises(ValueError, match=f"workspace: expected at least {bytes_needed} bytes"):
        run(offsets, device_offsets, workspace[:-1], *outputs)
    with pytest.raises(ValueError, match=r"out: expected 18 tokens"):
        run(offsets, device_offsets, workspace, torch.empty(17, 8), *outputs[1:])
    with pytest.raises(ValueError, match="device_offsets: expected segment_offsets and the"):
        run(offsets, device_offsets.flip(0).contiguous(), workspace, *outputs)
    with pytest.raises(ValueError, match="segment_offsets: expected offsets from 0 to the 50"):
        _C.token_merge_hierarchical_workspace(tokens, offsets - 1, *knobs)
    with pytest.raises(ValueError, match="segment_offsets: expected non-decreasing offsets"):
        _C.token_merge_hierarchical_workspace(tokens, torch.tensor([0, 30, 20, 40, 50]), *knobs)
    with pytest.raises(ValueError, match="metric_chunks: expected a divisor"):
        _C.token_merge_hierarchical_workspace(tokens, offsets, 3, 6)
    with pytest.raises(ValueError, match="tokens_per_segment: expected an int >= 1"):
        _C.token_merge_hierarchical_workspace(tokens, offsets, 2, 0)


def test_merge_binding_carries_flat_positions_without_an_index():
    plan = ops.bipartite_soft_matching(METRIC, 3)
    index_out = torch.full((2, 6), -7)
    _C.token_merge_wavg(
        X, None, None, plan.kept_index, plan.source_offsets, plan.source_index,
        torch.empty(2, 6, 16), torch.empty(2, 6), index_out, 9, 9, 3,
    )  # fmt: skip
    assert torch.equal(index_out, plan.kept_index + 9 * torch.arange(2)[:, None])
