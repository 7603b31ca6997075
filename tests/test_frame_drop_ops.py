"""The DTD kernels (through vidllm_ext.ops) against the reference and a float64 oracle."""

import math

import pytest
import torch
from conftest import DEVICES
from support.helpers import (
    DECISION_BAND,
    FLOAT_DTYPES,
    assert_close_to_oracle,
    poison_like,
    scores_float64,
    strided_view,
    video_frames,
)

from vidllm_ext import ops, reference
from vidllm_ext.reference.frame_drop import keep_mask_from_scores

SIZES = [(f, n, d) for f in (0, 1, 2, 33) for n in (1, 7, 257) for d in (1, 3, 1029)]
# Per (method, mode): a threshold that splits video_frames' tokens into kept and dropped.
THRESHOLDS = {
    ("feature", "absolute"): 0.9,
    ("pixel", "absolute"): 0.34,
    ("feature", "relative"): 0.6,
    ("pixel", "relative"): 0.35,
}
CASES = list(THRESHOLDS)


def previous_step(frames, seed=1):
    return video_frames(1, frames.shape[1], frames.shape[2], frames.dtype, frames.device, seed)[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("method", ["feature", "pixel"])
@pytest.mark.parametrize("steps,tokens,dim", SIZES)
def test_scores_match_float64_oracle(device, dtype, method, steps, tokens, dim):
    frames = video_frames(steps, tokens, dim, dtype, device)
    for prev in (None, previous_step(frames)):
        actual = ops.dtd_scores(frames, method=method, prev=prev)
        assert actual.dtype == torch.float32 and actual.shape == (steps, tokens)
        torch_result = reference.dtd_scores(frames, method=method, prev=prev)
        assert_close_to_oracle(actual, torch_result, scores_float64(frames, method, prev))


def assert_decisions_match(frames, threshold, method, mode, prev):
    """Exact against the reference decision on the kernel's own scores; against the full
    reference, differences only for tokens within DECISION_BAND of the decision boundary."""
    keep = ops.dtd_keep_mask(frames, threshold, method=method, mode=mode, prev=prev).cpu()
    own_scores = ops.dtd_scores(frames, method=method, prev=prev).cpu()
    assert keep.dtype == torch.bool and keep.shape == frames.shape[:2]
    assert torch.equal(keep, keep_mask_from_scores(own_scores, threshold, method=method, mode=mode))

    frames_cpu, prev_cpu = frames.cpu(), None if prev is None else prev.cpu()
    expected = reference.dtd_keep_mask(
        frames_cpu, threshold, method=method, mode=mode, prev=prev_cpu
    )
    differs = keep != expected
    if not differs.any():
        return
    scores = reference.dtd_scores(frames_cpu, method=method, prev=prev_cpu)
    boundary = torch.full_like(scores, threshold)
    if mode == "relative":
        redundancy = scores if method == "feature" else -scores
        ordered = redundancy.nan_to_num(nan=-math.inf).sort(-1, descending=True)[0]
        quota = max(math.floor(frames.shape[1] * threshold), 1)
        boundary = ordered[:, quota - 1 : quota].expand_as(scores).abs()
        scores = redundancy.abs()
    assert ((scores - boundary).abs()[differs] <= DECISION_BAND).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("method,mode", CASES)
@pytest.mark.parametrize("steps,tokens,dim", SIZES)
def test_keep_mask_matches_reference(device, dtype, method, mode, steps, tokens, dim):
    frames = video_frames(steps, tokens, dim, dtype, device, seed=2)
    threshold = THRESHOLDS[(method, mode)]
    for prev in (None, previous_step(frames)):
        assert_decisions_match(frames, threshold, method, mode, prev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "method,mode,threshold,expect",
    [
        ("feature", "absolute", -1.0, "all"),
        ("feature", "absolute", 1.0, "none"),
        ("pixel", "absolute", 0.0, "none"),
        ("pixel", "absolute", 1e30, "all"),
        ("feature", "relative", 1.0, "all"),
        ("feature", "relative", 0.0, "none"),
        ("pixel", "relative", 1.0, "all"),
        ("pixel", "relative", 0.0, "none"),
    ],
)
def test_all_drop_and_none_drop_thresholds(device, method, mode, threshold, expect):
    frames = video_frames(9, 33, 64, torch.float32, device, seed=3)
    keep = ops.dtd_keep_mask(frames, threshold, method=method, mode=mode).cpu()
    assert keep[0].all(), "step 0 without prev is kept whole"
    assert not keep[1:].any() if expect == "all" else keep[1:].all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["feature", "pixel"])
def test_relative_ties_drop_lower_index_first(device, method):
    # Identical tokens give bitwise identical scores: ties everywhere.
    row = torch.randn(1, 1, 16)
    frames = row.expand(4, 10, 16).clone().to(device)
    keep = ops.dtd_keep_mask(frames, 0.35, method=method, mode="relative").cpu()
    assert keep[0].all()
    for step in range(1, 4):  # floor(10 * 0.35) = 3 dropped: tokens 0, 1, 2
        assert keep[step].tolist() == [False] * 3 + [True] * 7


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("method,mode", CASES)
def test_nan_and_inf_never_cause_a_drop_and_match_reference(device, dtype, method, mode):
    frames = video_frames(6, 40, 24, torch.float32, "cpu", seed=4)
    frames[2, 5, 3] = math.nan
    frames[3, 7, :] = math.nan
    frames[1, 9, 0] = math.inf
    frames[4, 11, 2] = -math.inf
    frames[5, 12, :] = math.inf
    frames = frames.to(dtype=dtype, device=device)
    threshold = THRESHOLDS[(method, mode)]
    actual = ops.dtd_scores(frames, method=method).cpu()
    expected = reference.dtd_scores(frames.cpu(), method=method)
    assert torch.equal(actual.isnan(), expected.isnan())
    keep = ops.dtd_keep_mask(frames, threshold, method=method, mode=mode).cpu()
    assert keep[actual.isnan()].all(), "a NaN score dropped its token"
    assert_decisions_match(frames, threshold, method, mode, None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [1, 0, -1], ids=["token_stride", "step_stride", "last_dim_stride"])
def test_non_contiguous_frames(device, dim):
    frames = strided_view(video_frames(10, 30, 40, torch.bfloat16, device, seed=5), dim)
    tokens, dim = frames.shape[1:]
    prev = video_frames(1, 2 * tokens, 2 * dim, torch.bfloat16, device, seed=6)[0, ::2, ::2]
    for method in ("feature", "pixel"):
        actual = ops.dtd_scores(frames, method=method, prev=prev)
        expected = ops.dtd_scores(frames.contiguous(), method=method, prev=prev.contiguous())
        assert torch.equal(actual, expected), "strides changed the result"
    keep = ops.dtd_keep_mask(frames, 0.9, prev=prev)
    kept, kept_index, counts = ops.compact_tokens(frames, keep)
    ref = reference.compact_tokens(frames.cpu(), keep.cpu())
    assert torch.equal(kept.cpu(), ref[0]) and torch.equal(kept_index.cpu(), ref[1])
    assert torch.equal(counts.cpu(), ref[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("steps,tokens,dim", SIZES)
@pytest.mark.parametrize("keep_fraction", [0.0, 0.4, 1.0])
def test_compact_tokens_matches_reference(device, dtype, steps, tokens, dim, keep_fraction):
    frames = video_frames(steps, tokens, dim, dtype, device, seed=7)
    generator = torch.Generator().manual_seed(8)
    keep = (torch.rand(steps, tokens, generator=generator) < keep_fraction).to(device)
    kept, kept_index, counts = ops.compact_tokens(frames, keep)
    expected = reference.compact_tokens(frames.cpu(), keep.cpu())
    assert kept.dtype == dtype and kept_index.dtype == torch.int64 and counts.dtype == torch.int32
    assert torch.equal(kept.cpu(), expected[0])
    assert torch.equal(kept_index.cpu(), expected[1])
    assert torch.equal(counts.cpu(), expected[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("capacity_delta", [-5, 0, 9])
def test_compact_tokens_into_fixed_capacity(device, dtype, capacity_delta):
    frames = video_frames(11, 37, 19, dtype, device, seed=9)
    keep = ops.dtd_keep_mask(frames, 0.5, mode="relative")
    expected = reference.compact_tokens(frames.cpu(), keep.cpu())
    total_kept = expected[1].numel()
    capacity = total_kept + capacity_delta
    kept = poison_like(torch.empty(capacity, 19, dtype=dtype, device=device))
    kept_index = poison_like(torch.empty(capacity, dtype=torch.int64, device=device))
    counts = poison_like(torch.empty(11, dtype=torch.int32, device=device))
    total = ops.compact_tokens_into(frames, keep, kept, kept_index, counts)
    assert total.device == frames.device and total.tolist() == [total_kept]
    written = min(capacity, total_kept)
    assert torch.equal(kept[:written].cpu(), expected[0][:written])
    assert torch.equal(kept_index[:written].cpu(), expected[1][:written])
    assert torch.equal(counts.cpu(), expected[2])
    assert kept[written:].isnan().all() and (kept_index[written:] == -7).all(), "wrote past K"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method,mode", CASES)
def test_drop_redundant_tokens_is_mask_then_compact(device, method, mode):
    frames = video_frames(12, 50, 96, torch.float16, device, seed=10)
    threshold = THRESHOLDS[(method, mode)]
    result = ops.drop_redundant_tokens(frames, threshold, method=method, mode=mode)
    keep = ops.dtd_keep_mask(frames, threshold, method=method, mode=mode)
    assert torch.equal(result.keep_mask, keep)
    kept, kept_index, counts = reference.compact_tokens(frames.cpu(), keep.cpu())
    assert torch.equal(result.kept.cpu(), kept) and torch.equal(result.kept_index.cpu(), kept_index)
    assert torch.equal(result.counts.cpu(), counts)
    expected_ratio = 1 - counts.float() / frames.shape[1]
    assert torch.allclose(result.drop_ratio.cpu(), expected_ratio)
    assert 0.1 < result.drop_ratio[1:].mean() < 0.95, "the threshold should drop some tokens"


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_deterministic(device):
    frames = video_frames(33, 257, 1029, torch.bfloat16, device, seed=11)
    first = ops.dtd_scores(frames).view(torch.int32)  # bitwise, NaN included
    for _ in range(3):
        assert torch.equal(ops.dtd_scores(frames).view(torch.int32), first)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method,mode", CASES)
def test_kernels_write_every_output_element(device, method, mode):
    """Outputs poisoned before the call: NaN scores, mask bytes of 7, counts of -7."""
    from vidllm_ext import _C
    from vidllm_ext.ops._backend import dl, stream_of

    frames = video_frames(17, 45, 33, torch.float16, device, seed=12)
    prev = previous_step(frames)
    scores = poison_like(torch.empty(17, 45, device=device))
    _C.frame_drop_score(dl(frames), dl(prev), dl(scores), method, stream_of(frames))
    assert not scores.isnan().any()
    keep_bytes = torch.full((17, 45), 7, dtype=torch.uint8, device=device)
    counts = poison_like(torch.empty(17, dtype=torch.int32, device=device))
    threshold = THRESHOLDS[(method, mode)]
    _C.frame_drop_decide(
        dl(scores), dl(keep_bytes), dl(counts), method, mode, threshold, stream_of(frames)
    )
    assert ((keep_bytes == 0) | (keep_bytes == 1)).all()
    assert torch.equal(counts, keep_bytes.sum(-1, dtype=torch.int32))
    expected = ops.dtd_keep_mask(frames, threshold, method=method, mode=mode, prev=prev)
    assert torch.equal(keep_bytes.bool(), expected)
