"""LongVLM hierarchical merging (vidllm_ext.ops.hierarchical_merge) against the reference: exact
token counts, sizes, representatives and segments; features within the float policy of the
float64 group means."""

import pytest
import torch
from conftest import DEVICES
from support.token_merge import assert_features_close, bitwise, video_tokens

from vidllm_ext import ops
from vidllm_ext.contracts.token_merge import frame_segment_offsets, merged_offsets
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
    offsets = frame_segment_offsets(frames, per_frame, frames_per_segment)
    count = merged_offsets(offsets, tokens_per_segment)[-1]
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
    check_segments(result, offsets, tokens_per_segment)
    assert torch.equal(assignment[result.source_index.cpu()], torch.arange(count))
    assert_features_close(
        result.tokens.cpu(), expected.tokens, group_means(tokens, assignment, count)
    )


def check_segments(result, offsets, tokens_per_segment):
    """Every segment keeps min(tokens_per_segment, its tokens) tokens standing for all of them;
    a representative lies in its segment."""
    segments = len(offsets) - 1
    lengths = [end - first for first, end in zip(offsets, offsets[1:])]
    per_segment = torch.bincount(result.segment.cpu(), minlength=segments)
    assert per_segment.tolist() == [min(tokens_per_segment, n) for n in lengths]
    sizes = torch.zeros(segments).index_add_(0, result.segment.cpu(), result.sizes.cpu())
    assert sizes.tolist() == lengths
    starts = torch.tensor(offsets)
    first, end = starts[result.segment.cpu()], starts[result.segment.cpu() + 1]
    assert ((result.source_index.cpu() >= first) & (result.source_index.cpu() < end)).all()


def uneven_offsets(seed, target):
    """Segment offsets of random lengths: 0, 1, below, at and above the target, and odd ones."""
    generator = torch.Generator().manual_seed(seed)
    choices = [0, 1, max(target - 1, 0), target, target + 1, 2 * target + 3, 37, 129]
    picks = torch.randint(len(choices), (int(torch.randint(1, 9, (1,), generator=generator)),),
                          generator=generator)  # fmt: skip
    offsets = [0]
    for pick in picks.tolist():
        offsets.append(offsets[-1] + choices[pick])
    return offsets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(4))
def test_uneven_segments_match_reference(device, dtype, seed):
    target = [1, 5, 8, 30][seed]
    offsets = uneven_offsets(seed, target)
    dim, chunks = 12, 3
    tokens = video_tokens(1, offsets[-1], dim, dtype, device, seed=seed)[0]
    kwargs = dict(segment_offsets=offsets, tokens_per_segment=target, metric_chunks=chunks)
    result = ops.hierarchical_merge(tokens, **kwargs)
    expected, assignment = hierarchical_merge_with_assignment(tokens.cpu(), **kwargs)
    count = merged_offsets(offsets, target)[-1]
    assert result.tokens.shape == (count, dim) and result.tokens.dtype == dtype
    assert torch.equal(result.segment.cpu(), expected.segment)
    assert torch.equal(result.sizes.cpu(), expected.sizes)
    assert torch.equal(result.source_index.cpu(), expected.source_index)
    check_segments(result, offsets, target)
    if count:
        oracle = group_means(tokens[None], assignment, count)
        assert_features_close(result.tokens.cpu(), expected.tokens, oracle)
    # A CPU tensor of offsets is the same request.
    again = ops.hierarchical_merge(tokens, **{**kwargs, "segment_offsets": torch.tensor(offsets)})
    for a, b in zip(again, result):
        assert torch.equal(bitwise(a), bitwise(b))


@pytest.mark.parametrize("device", DEVICES)
def test_frames_are_segment_offsets(device):
    tokens = video_tokens(25, 16, 32, torch.float16, device, seed=3)
    by_frames = ops.hierarchical_merge(tokens, frames_per_segment=10, metric_chunks=4)
    offsets = frame_segment_offsets(25, 16, 10)
    by_offsets = ops.hierarchical_merge(
        tokens.reshape(-1, 32), segment_offsets=offsets, metric_chunks=4
    )
    for a, b in zip(by_frames, by_offsets):
        assert torch.equal(bitwise(a), bitwise(b))


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
    assert frame_segment_offsets(100, 256, 10) == [2560 * s for s in range(11)]
    assert frame_segment_offsets(64, 256, 10) == [2560 * s for s in range(7)] + [64 * 256]
    assert merged_offsets(frame_segment_offsets(64, 256, 10), 64)[-1] == 7 * 64
    assert merged_offsets([0, 0, 3, 40, 40], 5) == [0, 0, 3, 8, 8]


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
