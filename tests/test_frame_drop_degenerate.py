"""The DTD ops on degenerate but valid inputs: zero tokens per step, duplicated steps (static
video, repeated or padded frames) and constant frames. Identical vectors score exactly 1 in the
kernels and the reference, so masks are exactly equal there, at any threshold."""

import pytest
import torch
from conftest import DEVICES
from support.helpers import FLOAT_DTYPES, poison_like, video_frames

from vidllm_ext import ops, reference

CASES = [
    ("feature", "absolute", 0.9),
    ("pixel", "absolute", 0.34),
    ("feature", "relative", 0.6),
    ("pixel", "relative", 0.35),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [0, 1, 5])
@pytest.mark.parametrize("with_prev", [False, True], ids=["no_prev", "prev"])
def test_zero_tokens_per_step(device, steps, with_prev):
    frames = torch.randn(steps, 0, 8, device=device)
    prev = torch.randn(0, 8, device=device) if with_prev else None
    for method in ("feature", "pixel"):
        scores = ops.dtd_scores(frames, method=method, prev=prev)
        assert scores.shape == (steps, 0) and scores.dtype == torch.float32
    for method, mode, threshold in CASES:
        kwargs = dict(method=method, mode=mode, prev=prev)
        keep = ops.dtd_keep_mask(frames, threshold, **kwargs)
        assert keep.shape == (steps, 0) and keep.dtype == torch.bool
        result = ops.drop_redundant_tokens(frames, threshold, **kwargs)
        assert result.kept.shape == (0, 8) and result.kept_index.shape == (0,)
        assert result.keep_mask.shape == (steps, 0)
        assert result.counts.tolist() == [0] * steps and result.counts.dtype == torch.int32
    keep = torch.zeros(steps, 0, dtype=torch.bool, device=device)
    kept, kept_index, counts = ops.compact_tokens(frames, keep)
    expected = reference.compact_tokens(frames.cpu(), keep.cpu())
    for actual, wanted in zip((kept, kept_index, counts), expected):
        assert actual.shape == wanted.shape and actual.dtype == wanted.dtype
        assert torch.equal(actual.cpu(), wanted)
    kept = poison_like(torch.empty(3, 8, device=device))
    kept_index = poison_like(torch.empty(3, dtype=torch.int64, device=device))
    counts = poison_like(torch.empty(steps, dtype=torch.int32, device=device))
    total = ops.compact_tokens_into(frames, keep, kept, kept_index, counts)
    assert total.tolist() == [0] and counts.tolist() == [0] * steps
    assert kept.isnan().all() and (kept_index == -7).all(), "wrote past K = 0"


def duplicated_steps(dtype, device, dim):
    """Video frames where steps 1, 3 and 4 repeat the step before them exactly."""
    frames = video_frames(6, 24, dim, torch.float32, "cpu", seed=20)
    frames[1] = frames[0]
    frames[3] = frames[2]
    frames[4] = frames[2]
    return frames.to(dtype=dtype, device=device)


def degenerate_inputs(dtype, device):
    """(name, frames): duplicated steps, the issue's repeated frame, constant frames."""
    repeated = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(0)).repeat(5, 1, 1)
    yield "duplicated-4", duplicated_steps(dtype, device, 4)
    yield "duplicated-1029", duplicated_steps(dtype, device, 1029)
    yield "repeated", repeated.to(dtype=dtype, device=device)
    yield "constant", torch.full((4, 9, 33), 0.3, dtype=dtype, device=device)
    yield "constant-1", torch.full((3, 5, 1), -2.5, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_identical_steps_score_exactly_one(device, dtype):
    for name, frames in degenerate_inputs(dtype, device):
        repeats = (frames[1:] == frames[:-1]).all(-1).cpu()
        actual = ops.dtd_scores(frames)[1:].cpu()
        expected = reference.dtd_scores(frames.cpu())[1:]
        assert (actual[repeats] == 1.0).all(), f"{name}: op {actual[repeats].unique()}"
        assert (expected[repeats] == 1.0).all(), f"{name}: reference {expected[repeats].unique()}"
        with_prev = ops.dtd_scores(frames[1:], prev=frames[0]).cpu()
        assert torch.equal(with_prev, ops.dtd_scores(frames)[1:].cpu()), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("threshold", [1.0, 0.9999999, 0.5])
def test_keep_mask_on_identical_steps_equals_reference(device, dtype, threshold):
    for name, frames in degenerate_inputs(dtype, device):
        repeats = (frames[1:] == frames[:-1]).all(-1).cpu()
        keep = ops.dtd_keep_mask(frames, threshold).cpu()
        expected = reference.dtd_keep_mask(frames.cpu(), threshold)
        assert torch.equal(keep[1:][repeats], expected[1:][repeats]), name
        # cosine 1 > threshold drops every repeated token, except at threshold 1.
        assert (keep[1:][repeats] == (threshold == 1.0)).all(), name
        for fraction in (0.3, 1.0):  # ties at 1: the lower index drops first
            relative = ops.dtd_keep_mask(frames, fraction, mode="relative").cpu()
            wanted = reference.dtd_keep_mask(frames.cpu(), fraction, mode="relative")
            whole = repeats.all(-1)  # steps that repeat the one before entirely
            assert torch.equal(relative[1:][whole], wanted[1:][whole]), name


@pytest.mark.parametrize("device", DEVICES)
def test_cosine_of_huge_norms(device):
    """|a|^2 near 1e37: the product of two squared norms overflows float32, the cosine must not
    (both are scaled by 2^-64 first); squared norms past float32's range give NaN everywhere."""
    frames = video_frames(4, 10, 16, torch.float32, device, seed=21) * 1e18
    actual = ops.dtd_scores(frames)[1:].cpu()
    expected = reference.dtd_scores(frames.cpu())[1:]
    assert actual.isfinite().all() and (actual.abs() > 0.1).all()
    assert (actual - expected).abs().max() <= 1e-6
    frames[2, 3] = 1e20  # its squared norm overflows: steps 2 and 3 at token 3 score NaN
    nan = torch.zeros(3, 10, dtype=torch.bool)
    nan[1:, 3] = True
    assert torch.equal(ops.dtd_scores(frames)[1:].cpu().isnan(), nan)
    assert torch.equal(reference.dtd_scores(frames.cpu())[1:].isnan(), nan)
