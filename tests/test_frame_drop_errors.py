"""Every bad argument gets a clear Python exception from the ops, the reference and _C itself."""

import numpy as np
import pytest
import torch

from vidllm_ext import _C, ops, reference

FRAMES = torch.randn(4, 6, 8)
IMPLS = [ops, reference]


@pytest.mark.parametrize("impl", IMPLS, ids=["ops", "reference"])
@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(frames=torch.randn(6, 8)), ValueError, "frames: expected a 3-D tensor"),
        (dict(frames=torch.randn(2, 4, 6, 8)), ValueError, "frames: expected a 3-D tensor"),
        (dict(frames=torch.ones(4, 6, 8, dtype=torch.int64)), TypeError, "frames: expected dtype"),
        (dict(frames=torch.randn(4, 6, 0)), ValueError, "non-empty feature dimension"),
        (dict(frames=[[1.0]]), TypeError, "frames: expected a torch.Tensor"),
        (dict(prev=torch.randn(5, 8)), ValueError, r"prev: expected shape \[6, 8\]"),
        (dict(prev=torch.randn(6, 9)), ValueError, r"prev: expected shape \[6, 8\]"),
        (dict(prev=torch.randn(6, 8, dtype=torch.float64)), TypeError, "prev: expected dtype"),
        (dict(method="pixels"), ValueError, "method: expected 'feature' or 'pixel'"),
        (dict(mode="abs"), ValueError, "mode: expected 'absolute' or 'relative'"),
        (dict(threshold=1.5), ValueError, r"cosine similarity in \[-1, 1\]"),
        (dict(threshold=-1.01), ValueError, r"cosine similarity in \[-1, 1\]"),
        (dict(threshold=float("nan")), ValueError, "threshold: expected"),
        (dict(threshold="0.5"), TypeError, "threshold: expected a Python float"),
        (dict(threshold=-0.1, method="pixel"), ValueError, "mean absolute difference >= 0"),
        (dict(threshold=float("inf"), method="pixel"), ValueError, "finite mean absolute"),
        (dict(threshold=1.2, mode="relative"), ValueError, r"fraction in \[0, 1\]"),
        (dict(threshold=-0.2, mode="relative"), ValueError, r"fraction in \[0, 1\]"),
    ],
)
def test_bad_arguments(impl, kwargs, error, message):
    args = dict(frames=FRAMES, threshold=0.5, method="feature", mode="absolute", prev=None)
    args.update(kwargs)
    frames, threshold = args.pop("frames"), args.pop("threshold")
    with pytest.raises(error, match=message):
        impl.dtd_keep_mask(frames, threshold, **args)
    with pytest.raises(error, match=message):
        impl.drop_redundant_tokens(frames, threshold, **args)


@pytest.mark.parametrize("impl", IMPLS, ids=["ops", "reference"])
@pytest.mark.parametrize(
    "keep_mask,error,message",
    [
        (torch.ones(4, 6, dtype=torch.int64), TypeError, "keep_mask: expected dtype torch.bool"),
        (torch.ones(4, 5, dtype=torch.bool), ValueError, r"keep_mask: expected shape \[4, 6\]"),
        (torch.ones(24, dtype=torch.bool), ValueError, r"keep_mask: expected shape \[4, 6\]"),
    ],
)
def test_bad_keep_mask(impl, keep_mask, error, message):
    with pytest.raises(error, match=message):
        impl.compact_tokens(FRAMES, keep_mask)


def test_binding_checks_arguments_itself():
    scores = torch.empty(4, 6)
    with pytest.raises(ValueError, match="frames: expected a 3-D tensor"):
        _C.frame_drop_score(torch.randn(6, 8), None, scores, "feature")
    with pytest.raises(ValueError, match=r"scores: expected size 6 in dimension 1"):
        _C.frame_drop_score(FRAMES, None, torch.empty(4, 5), "feature")
    with pytest.raises(TypeError, match="scores: expected dtype float32, got float64"):
        _C.frame_drop_score(FRAMES, None, torch.empty(4, 6, dtype=torch.float64), "feature")
    with pytest.raises(ValueError, match="scores: expected a contiguous tensor"):
        _C.frame_drop_score(FRAMES, None, torch.empty(6, 4).t(), "feature")
    with pytest.raises(ValueError, match="frames: expected the last dimension to be contiguous"):
        _C.frame_drop_score(torch.randn(4, 6, 16)[..., ::2], None, scores, "feature")
    with pytest.raises(TypeError, match="prev: expected dtype float32 like frames, got float16"):
        _C.frame_drop_score(FRAMES, torch.randn(6, 8).half(), scores, "feature")
    with pytest.raises(TypeError, match="frames: expected a tensor"):
        _C.frame_drop_score("frames", None, scores, "feature")
    with pytest.raises(ValueError, match="threshold: expected"):
        _C.frame_drop_decide(
            scores,
            torch.empty(4, 6, dtype=torch.bool),
            torch.empty(4, dtype=torch.int32),
            "feature",
            "relative",
            2.0,
        )
    with pytest.raises(ValueError, match=r"kept_index: expected size 3 in dimension 0"):
        _C.frame_drop_compact(
            FRAMES,
            torch.ones(4, 6, dtype=torch.bool),
            torch.empty(4, dtype=torch.int32),
            torch.empty(4, dtype=torch.int64),
            torch.empty(3, 8),
            torch.empty(2, dtype=torch.int64),
            torch.empty(1, dtype=torch.int64),
        )
    with pytest.raises(TypeError, match="kept: expected dtype float32 like frames, got bfloat16"):
        _C.frame_drop_compact(
            FRAMES,
            torch.ones(4, 6, dtype=torch.bool),
            torch.empty(4, dtype=torch.int32),
            torch.empty(4, dtype=torch.int64),
            torch.empty(3, 8, dtype=torch.bfloat16),
            torch.empty(3, dtype=torch.int64),
            torch.empty(1, dtype=torch.int64),
        )


def test_binding_accepts_numpy_arrays():
    frames = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    scores = np.full((3, 5), np.nan, dtype=np.float32)
    _C.frame_drop_score(frames, None, scores, "pixel")
    expected = reference.dtd_scores(torch.from_numpy(frames), method="pixel")
    assert torch.allclose(torch.from_numpy(scores)[1:], expected[1:])
    assert np.isnan(scores[0]).all()


def test_consumed_capsule_is_rejected():
    capsule = torch.utils.dlpack.to_dlpack(FRAMES)
    _C.frame_drop_score(capsule, None, torch.empty(4, 6), "feature")
    with pytest.raises(TypeError, match="unused DLPack capsule"):
        _C.frame_drop_score(capsule, None, torch.empty(4, 6), "feature")


def test_more_than_2_31_minus_1_tokens_per_step_are_refused():
    """README's Limits. Zero-stride views, so nothing that large is allocated; the bindings are
    called directly because the ops allocate their [steps, tokens] outputs first."""
    frames = torch.zeros(1, 1, 4).expand(2, 2**31, 4)
    message = r"frames: at most 2\^31 - 1 tokens per step are supported, got shape \[2, 2147483648"
    scores = torch.zeros(1).expand(2, 2**31)
    with pytest.raises(ValueError, match=message):
        _C.frame_drop_score(frames, None, scores, "feature", 0)
    keep_mask = torch.zeros(1, dtype=torch.bool).expand(2, 2**31)
    counts, offsets = torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int64)
    kept, kept_index = torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64)
    total = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match=message):
        _C.frame_drop_compact(frames, keep_mask, counts, offsets, kept, kept_index, total, 0)
