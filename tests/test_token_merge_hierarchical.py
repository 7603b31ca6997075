"""LongVLM hierarchical merging (vidllm_ext.ops.hierarchical_merge) against the reference: exact
token counts, sizes, representatives and segments; features within the float policy of the
float64 group means."""

import pytest
import torch
from conftest import DEVICES
from support.token_merge import assert_features_close, bitwise, video_tokens

from vidllm_ext import ops, reference
from vidllm_ext.contracts.token_merge import merged_token_count, video_segments
from vidllm_ext.reference.token_merge import hierarchical_merge_with_assignment, merge_schedule

# (frames, tokens per frame, dim, frames_per_segment, tokens_per_segment, metric_chunks)
CASES = {
    "longvlm": (100, 256, 128, 10, 30, 16),  # LongVLM: 10 segments of 2560 tokens -> 30 each
    "qwen2.5-vl-steps": (64, 256, 64, 10, 64, 16),  # 7 segments, the last of 4 steps
    "short-last-segment": (25, 16, 32, 10, 30, 4),
    "last-segment-under-target": (23, 4, 8, 10, 30, 2),  # 40, 40, 12 tokens -> 30, 30, 12
    "odd": (7, 9, 12, 3, 5, 3),
    # Two metric channels: with one, every similarity is +-1 up to rounding (ties decided by it).
    "one-token-per-segment": (5, 7, 6, 1, 1, 3),
    "one-token": (1, 1, 3, 10, 30, 1),
    "no-frames": (0, 256, 16, 10, 30, 16),
    "no-tokens": (4, 0, 16, 10, 30, 16),
}


def run_both(tokens, frames_per_segment, tokens_per_segment, metric_chunks):
    kwargs = dict(
        frames_per_segment=frames_per_segment,
        tokens_per_segment=tokens_per_segment,
        metric_chunks=metric_chunks,
    )
    result = ops.hierarchical_merge(tokens, **kwargs)
    expected, assignment = hierarchical_merge_with_assignment(tokens.cpu(), **kwargs)
    return result, expected, assignment


def group_means(tokens, assignment, groups):
    """float64 [groups, D]: the mean of the input tokens assigned to each merged token."""
    flat = tokens.detach().cpu().double().reshape(-1, tokens.shape[2])
    sums = torch.zeros(groups, flat.shape[1], dtype=torch.float64).index_add_(0, assignment, flat)
    counts = torch.zeros(groups, dtype=torch.float64).index_add_(
        0, assignment, torch.ones(assignment.shape[0], dtype=torch.float64)
    )
    return sums / counts[:, None]


# The two model-sized cases run in one dtype each (they take seconds on a CPU); the rest in both.
DTYPE_CASES = [
    (case, dtype)
    for case in CASES
    for dtype in (torch.float32, torch.bfloat16)
    if not (case == "longvlm" and dtype != torch.float32)
    and not (case == "qwen2.5-vl-steps" and dtype != torch.bfloat16)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,dtype", DTYPE_CASES)
def test_hierarchical_merge_matches_reference(device, case, dtype):
    frames, per_frame, dim, frames_per_segment, tokens_per_segment, chunks = CASES[case]
    tokens = video_tokens(frames, per_frame, dim, dtype, device, seed=frames + dim)
    result, expected, assignment = run_both(tokens, frames_per_segment, tokens_per_segment, chunks)
    segments = video_segments(frames, per_frame, frames_per_segment)
    count = merged_token_count(segments, tokens_per_segment)
    assert result.tokens.shape == (count, dim) and result.tokens.dtype == dtype
    assert result.sizes.dtype == torch.float32 and result.sizes.shape == (count,)
    assert result.source_index.dtype == result.segment.dtype == torch.int64
    assert result.tokens.device == tokens.device
    assert torch.equal(result.segment.cpu(), expected.segment)
    assert torch.equal(result.sizes.cpu(), expected.sizes)
    assert torch.equal(result.source_index.cpu(), expected.source_index)
    if count == 0:
        return
    # Every segment keeps min(tokens_per_segment, its tokens) tokens standing for all of them.
    per_segment = torch.bincount(result.segment.cpu(), minlength=segments.count)
    lengths = [segments.tokens] * (segments.count - 1) + [segments.last_tokens]
    assert per_segment.tolist() == [min(tokens_per_segment, n) for n in lengths]
    sizes = torch.zeros(segments.count).index_add_(0, result.segment.cpu(), result.sizes.cpu())
    assert sizes.tolist() == lengths
    # A representative lies in its segment and is a member of its own group.
    first = result.segment.cpu() * segments.tokens
    assert (
        (result.source_index.cpu() >= first) & (result.source_index.cpu() < first + segments.tokens)
    ).all()
    assert torch.equal(assignment[result.source_index.cpu()], torch.arange(count))
    assert_features_close(
        result.tokens.cpu(), expected.tokens, group_means(tokens, assignment, count)
    )


def static_videos(dtype, device):
    """(name, tokens, kwargs): repeated frames and constant tokens, where every candidate pair of
    equal tokens has similarity exactly 1 and the tie rule alone decides."""
    small = dict(frames_per_segment=10, tokens_per_segment=5, metric_chunks=2)
    for seed in range(8):  # the example is seed 0
        frame = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(seed))
        yield f"repeated-{seed}", frame.repeat(5, 1, 1), small
    yield "constant", torch.full((6, 9, 8), 0.7), small
    still = video_tokens(1, 64, 32, seed=42).repeat(12, 1, 1)
    yield "still-scene", still, dict(frames_per_segment=4, tokens_per_segment=20, metric_chunks=4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_static_video_matches_reference_exactly(device, dtype):
    for name, tokens, kwargs in static_videos(dtype, device):
        tokens = tokens.to(dtype=dtype, device=device)
        result = ops.hierarchical_merge(tokens, **kwargs)
        expected, assignment = hierarchical_merge_with_assignment(tokens.cpu(), **kwargs)
        assert result.sizes.tolist() == expected.sizes.tolist(), name
        assert torch.equal(result.source_index.cpu(), expected.source_index), name
        assert torch.equal(result.segment.cpu(), expected.segment), name
        oracle = group_means(tokens, assignment, expected.sizes.shape[0])
        assert_features_close(result.tokens.cpu(), expected.tokens, oracle)


def test_longvlm_schedules():
    assert merge_schedule(2560, 30) == [1280, 640, 320, 160, 80, 40, 10]
    assert merge_schedule(2560, 64) == [1280, 640, 320, 160, 80, 16]
    assert merge_schedule(1024, 64) == [512, 256, 128, 64]
    assert merge_schedule(30, 30) == [] and merge_schedule(12, 30) == []
    assert video_segments(100, 256, 10) == (10, 2560, 2560)
    assert video_segments(64, 256, 10) == (7, 2560, 1024)
    assert merged_token_count(video_segments(64, 256, 10), 64) == 7 * 64


@pytest.mark.parametrize("device", DEVICES)
def test_hierarchical_merge_is_deterministic(device):
    tokens = video_tokens(30, 64, 96, torch.bfloat16, device, seed=40)
    first = ops.hierarchical_merge(tokens, tokens_per_segment=20, metric_chunks=8)
    for _ in range(2):
        again = ops.hierarchical_merge(tokens, tokens_per_segment=20, metric_chunks=8)
        for a, b in zip(again, first):
            assert torch.equal(bitwise(a), bitwise(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["frame_stride", "token_stride", "last_dim_stride"])
def test_hierarchical_merge_non_contiguous(device, layout):
    tokens = video_tokens(24, 40, 64, torch.float16, device, seed=41)
    if layout == "frame_stride":
        tokens = tokens[::2]
    elif layout == "token_stride":
        tokens = tokens[:, ::2]
    else:
        tokens = tokens[..., ::2]
    kwargs = dict(frames_per_segment=5, tokens_per_segment=16, metric_chunks=4)
    actual = ops.hierarchical_merge(tokens, **kwargs)
    expected = ops.hierarchical_merge(tokens.contiguous(), **kwargs)
    for a, b in zip(actual, expected):
        assert torch.equal(bitwise(a), bitwise(b)), "strides changed the result"


# ---- uneven segments (segment_offsets): each segment merged on its own -----------------------

UNEVEN = {
    "after-dtd": [37, 40, 12, 0, 29, 40],  # a video thinned by frame drop, one segment emptied
    "all-lengths": [0, 1, 2, 5, 6, 7, 13],  # below, at and above the target
    "one-segment": [90],
    "only-empty": [0, 0],
}


def offsets_of(lengths):
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return offsets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", UNEVEN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_uneven_segments_match_the_reference(device, case, dtype):
    lengths, target, chunks = UNEVEN[case], 6, 4
    tokens = video_tokens(1, sum(lengths), 16, dtype, device, seed=len(lengths))[0]
    offsets = offsets_of(lengths)
    kwargs = dict(segment_offsets=offsets, tokens_per_segment=target, metric_chunks=chunks)
    result = ops.hierarchical_merge(tokens, **kwargs)
    expected = reference.hierarchical_merge(tokens.cpu(), **kwargs)
    count = sum(min(n, target) for n in lengths)
    assert result.tokens.shape == (count, 16) and result.tokens.dtype == dtype
    assert torch.equal(result.segment.cpu(), expected.segment)
    assert torch.equal(result.sizes.cpu(), expected.sizes)
    assert torch.equal(result.source_index.cpu(), expected.source_index)
    per_segment = torch.bincount(result.segment.cpu(), minlength=len(lengths)).tolist()
    assert per_segment == [min(n, target) for n in lengths]
    sizes = torch.zeros(len(lengths)).index_add_(0, result.segment.cpu(), result.sizes.cpu())
    assert sizes.tolist() == lengths
    first = torch.tensor(offsets[:-1])[result.segment.cpu()]
    last = torch.tensor(offsets[1:])[result.segment.cpu()]
    source = result.source_index.cpu()
    assert ((source >= first) & (source < last)).all(), "a representative left its segment"
    if count:
        assert_features_close(result.tokens.cpu(), expected.tokens, expected.tokens.double())


def test_equal_segments_given_as_offsets_are_the_frames_form():
    video = video_tokens(12, 40, 32, seed=3)
    frames_form = ops.hierarchical_merge(
        video, frames_per_segment=4, tokens_per_segment=7, metric_chunks=4
    )
    offsets_form = ops.hierarchical_merge(
        video.reshape(-1, 32),
        segment_offsets=torch.tensor([0, 160, 320, 480]),
        tokens_per_segment=7,
        metric_chunks=4,
    )
    for a, b in zip(frames_form, offsets_form):
        assert torch.equal(bitwise(a), bitwise(b))


@pytest.mark.parametrize("impl", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(segment_offsets=[0, 5, 3, 10]), ValueError, r"segment_offsets\[1\] = 5 > 3"),
        (dict(segment_offsets=[1, 10]), ValueError, "from 0 to 10"),
        (dict(segment_offsets=[0, 9]), ValueError, "from 0 to 10"),
        (dict(segment_offsets=[]), ValueError, "from 0 to 10"),
        (dict(segment_offsets=torch.tensor([0, 10.0])), ValueError, "an int64 tensor"),
        (dict(segment_offsets=[0, 2.5, 10]), TypeError, "expected an int"),
        (dict(segment_offsets=[0, 10], frames_per_segment=2), ValueError, "not both"),
        (dict(segment_offsets=[0, 10], metric_chunks=3), ValueError, "metric_chunks"),
    ],
)
def test_bad_segment_offsets(impl, kwargs, error, message):
    with pytest.raises(error, match=message):
        impl.hierarchical_merge(torch.randn(10, 8), **kwargs)


def test_uneven_segments_need_flat_tokens():
    with pytest.raises(ValueError, match=r"a 2-D tensor \[tokens, dim\]"):
        ops.hierarchical_merge(torch.randn(2, 5, 8), segment_offsets=[0, 10])
