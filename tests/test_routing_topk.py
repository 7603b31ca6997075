"""topk_per_segment (kernels through vidllm_ext.ops) against the reference: exact indices."""

import math

import pytest
import torch
from conftest import DEVICES, gpu_only
from support.helpers import FLOAT_DTYPES, poison_like
from support.routing_cases import (
    SEGMENT_LAYOUTS,
    layout_counts,
    offsets_from_counts,
    random_scores,
    reference_topk_loop,
)

from vidllm_ext import _C, ops, reference
from vidllm_ext.ops._backend import dl, stream_of
from vidllm_ext.reference.routing import keep_counts

KEEP_RATIOS = [0.0, 0.2, 0.5, 0.7, 1.0]


def selection(device, layout, dtype, keep_ratio, hostile, seed=0):
    counts = layout_counts(layout)
    scores = random_scores(sum(counts), dtype, seed, hostile).to(device)
    offsets = offsets_from_counts(counts).to(device)
    return scores, offsets, counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(SEGMENT_LAYOUTS))
@pytest.mark.parametrize("keep_ratio", KEEP_RATIOS)
@pytest.mark.parametrize("hostile", [False, True], ids=["random", "hostile"])
def test_topk_matches_reference(device, layout, keep_ratio, hostile):
    scores, offsets, counts = selection(device, layout, torch.float32, keep_ratio, hostile)
    index = ops.topk_per_segment(scores, offsets, keep_ratio)
    expected = reference.topk_per_segment(scores.cpu(), offsets.cpu(), keep_ratio)
    assert index.dtype == torch.int64 and index.device == scores.device
    assert torch.equal(index.cpu(), expected)
    kept_per_segment = keep_counts(torch.tensor(counts, dtype=torch.int64), keep_ratio)
    assert index.numel() == int(kept_per_segment.sum())


@pytest.mark.parametrize("device", DEVICES)
def test_topk_many_frames(device):
    """130 frames of 256 tokens: more than one work item of the CPU kernel."""
    counts = [256] * 130
    scores = random_scores(sum(counts), torch.float32, seed=9, hostile=True).to(device)
    offsets = offsets_from_counts(counts).to(device)
    expected = reference.topk_per_segment(scores.cpu(), offsets.cpu(), 0.2)
    assert torch.equal(ops.topk_per_segment(scores, offsets, 0.2).cpu(), expected)
    assert expected.numel() == 130 * 52


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["odd", "long_4100", "tiny_many"])
def test_topk_score_dtypes(device, dtype, layout):
    scores, offsets, _ = selection(device, layout, dtype, 0.3, hostile=True, seed=1)
    expected = reference.topk_per_segment(scores.cpu(), offsets.cpu(), 0.3)
    assert torch.equal(ops.topk_per_segment(scores, offsets, 0.3).cpu(), expected)


@pytest.mark.parametrize("layout", ["odd", "empty_segments", "tiny_many", "single_1"])
@pytest.mark.parametrize("keep_ratio", KEEP_RATIOS)
def test_reference_matches_a_plain_python_loop(layout, keep_ratio):
    scores, offsets, counts = selection("cpu", layout, torch.float32, keep_ratio, True, seed=2)
    expected = reference_topk_loop(scores, counts, keep_ratio)
    assert reference.topk_per_segment(scores, offsets, keep_ratio).tolist() == expected


@pytest.mark.parametrize("device", DEVICES)
def test_topk_semantics_by_hand(device):
    nan, inf = math.nan, math.inf
    segments = [
        ([0.5, 0.1, 0.9, 0.3, 0.2], [0, 2, 3]),  # keep ceil(2.5) = 3: 0.9, 0.5, 0.3
        ([], []),  # an empty segment keeps nothing
        ([1.0, nan, 3.0], [0, 2]),  # keep 2: NaN ranks below everything
        ([2.0, 2.0, 2.0, 2.0], [0, 1]),  # keep 2: ties go to the lower index
        ([nan, -inf, nan], [0, 1]),  # keep 2: -inf first, then the first NaN
        ([-0.0, 0.0, 0.0], [0, 1]),  # keep 2: -0.0 ties +0.0
        ([7.0], [0]),  # keep ceil(0.5) = 1
    ]
    scores = torch.tensor([v for values, _ in segments for v in values], device=device)
    counts = [len(values) for values, _ in segments]
    offsets = offsets_from_counts(counts)
    expected = [int(offsets[s]) + i for s, (_, kept) in enumerate(segments) for i in kept]
    index = ops.topk_per_segment(scores, offsets.to(device), 0.5).cpu().tolist()
    assert index == expected


def test_keep_count_is_the_float64_ceiling():
    tokens = torch.tensor([0, 1, 2, 10, 15, 256, 257, 4100, 65537])
    for keep_ratio in (0.0, 0.07, 0.14, 0.2, 0.3, 0.7, 0.999, 1.0):
        expected = [min(n, math.ceil(keep_ratio * n)) for n in tokens.tolist()]
        assert keep_counts(tokens, keep_ratio).tolist() == expected
    assert keep_counts(torch.tensor([50, 256]), 0.14).tolist() == [8, 36]  # 0.14 * 50 > 7
    assert keep_counts(torch.tensor([256]), 0.2).tolist() == [52]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("keep_ratio", [0.07, 0.14, 0.2, 0.35, 0.999])
def test_kernels_count_like_python(device, keep_ratio):
    counts = [1, 2, 10, 33, 50, 100, 150, 200, 256, 257]
    scores = random_scores(sum(counts), torch.float32, seed=8).to(device)
    index = ops.topk_per_segment(scores, offsets_from_counts(counts).to(device), keep_ratio)
    assert index.numel() == sum(min(n, math.ceil(keep_ratio * n)) for n in counts)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_non_contiguous_scores(device):
    base = random_scores(2 * 600, torch.bfloat16, seed=3, hostile=True).to(device)
    scores = base[::2]
    offsets = offsets_from_counts([100, 300, 1, 199]).to(device)
    expected = reference.topk_per_segment(scores.cpu().contiguous(), offsets.cpu(), 0.4)
    assert torch.equal(ops.topk_per_segment(scores, offsets, 0.4).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("capacity_delta", [-5, 0, 9])
@pytest.mark.parametrize("layout", ["odd", "tiny_many", "long_4100"])
def test_topk_into_fixed_capacity(device, capacity_delta, layout):
    scores, offsets, _ = selection(device, layout, torch.float16, 0.3, hostile=True, seed=4)
    expected = reference.topk_per_segment(scores.cpu(), offsets.cpu(), 0.3)
    capacity = max(expected.numel() + capacity_delta, 0)
    index = poison_like(torch.empty(capacity, dtype=torch.int64, device=device))
    total = ops.topk_per_segment_into(scores, offsets, 0.3, index)
    assert total.device == scores.device and total.tolist() == [expected.numel()]
    written = min(capacity, expected.numel())
    assert torch.equal(index[:written].cpu(), expected[:written])
    assert (index[written:] == -7).all(), "wrote past K"


@pytest.mark.parametrize("device", DEVICES)
def test_topk_binding_writes_every_slot(device):
    scores, offsets, counts = selection(device, "odd", torch.float32, 0.6, hostile=True, seed=6)
    slot_start = poison_like(torch.empty(len(counts), dtype=torch.int64, device=device))
    total = poison_like(torch.empty(1, dtype=torch.int64, device=device))
    expected = reference.topk_per_segment(scores.cpu(), offsets.cpu(), 0.6)
    index = poison_like(torch.empty(expected.numel(), dtype=torch.int64, device=device))
    _C.routing_topk(
        dl(scores), dl(offsets), 0.6, dl(slot_start), dl(total), dl(index), stream_of(scores)
    )
    kept = keep_counts(torch.tensor(counts), 0.6)
    assert slot_start.cpu().tolist() == (kept.cumsum(0) - kept).tolist()
    assert total.tolist() == [expected.numel()] and torch.equal(index.cpu(), expected)


@pytest.mark.cuda
@gpu_only
def test_topk_into_flags_invalid_offsets_on_cuda():
    scores = random_scores(20, torch.float32).cuda()
    index = torch.full((20,), -7, dtype=torch.int64, device="cuda")
    for bad in ([0, 12, 5, 20], [1, 5, 20], [0, 5, 19]):
        offsets = torch.tensor(bad, device="cuda")
        total = ops.topk_per_segment_into(scores, offsets, 0.5, index)
        assert total.tolist() == [-1] and (index == -7).all()
        with pytest.raises(ValueError, match="segment_offsets: expected offsets that run"):
            ops.topk_per_segment(scores, offsets, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_is_deterministic(device):
    scores, offsets, _ = selection(device, "frames_16x256", torch.bfloat16, 0.2, True, seed=7)
    first = ops.topk_per_segment(scores, offsets, 0.2)
    for _ in range(3):
        assert torch.equal(ops.topk_per_segment(scores, offsets, 0.2), first)
