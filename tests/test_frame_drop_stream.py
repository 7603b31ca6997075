import pytest
import torch
from conftest import DEVICES
from support.helpers import video_frames

import vidllm_ext
from vidllm_ext import ops

CHUNKINGS = [[33], [1] * 33, [0, 5, 0, 1, 20, 7], [16, 17], [2, 0, 31]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "method,mode,threshold",
    [("feature", "absolute", 0.9), ("pixel", "absolute", 0.34), ("feature", "relative", 0.7)],
)
@pytest.mark.parametrize("chunk_sizes", CHUNKINGS)
def test_chunked_stream_equals_one_call(device, method, mode, threshold, chunk_sizes):
    video = video_frames(33, 41, 72, torch.bfloat16, device, seed=20)
    whole = ops.drop_redundant_tokens(video, threshold, method=method, mode=mode)
    stream = vidllm_ext.DTDStream(threshold, method=method, mode=mode)
    parts, start = [], 0
    for size in chunk_sizes:
        parts.append(stream.push(video[start : start + size]))
        start += size
    assert stream.steps_seen == 33
    for field in ("kept", "kept_index", "keep_mask", "counts"):
        joined = torch.cat([getattr(part, field) for part in parts])
        assert torch.equal(joined, getattr(whole, field)), field


def test_reset_starts_a_new_video():
    video = video_frames(6, 9, 16, torch.float32, "cpu", seed=21)
    stream = vidllm_ext.DTDStream(0.9)
    first = stream.push(video)
    stream.reset()
    again = stream.push(video)
    assert torch.equal(first.kept_index, again.kept_index) and again.keep_mask[0].all()


def test_stream_rejects_a_chunk_of_another_shape():
    stream = vidllm_ext.DTDStream(0.9)
    stream.push(torch.randn(3, 9, 16))
    with pytest.raises(ValueError, match=r"chunk: expected \[f, 9, 16\]"):
        stream.push(torch.randn(3, 8, 16))


def test_stream_keeps_its_own_copy_of_the_last_step():
    video = video_frames(4, 9, 16, torch.float32, "cpu", seed=22)
    expected = ops.drop_redundant_tokens(video, 0.9)
    buffer = video[:2].clone()
    stream = vidllm_ext.DTDStream(0.9)
    stream.push(buffer)
    buffer.copy_(video[2:])  # a caller reusing its frame buffer
    second = stream.push(buffer)
    assert torch.equal(second.keep_mask, expected.keep_mask[2:])
