"""Resource checks (issue 15): resident memory stays flat over 10,000 calls, and every kernel
family either computes exactly on an input of more than 2^31 elements or refuses it with its
documented limit.

The big-input tests use uint8/bool data (or zero-stride float views, which take no memory), are
marked ``bigmem`` (deselect with ``-m "not bigmem"``) and skip unless /proc/meminfo says the
machine has twice what they need available.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from vidllm_ext import KVQuantConfig, ops

MIB = 2**20
GIB = 2**30
BIG = 2**31 + 9  # elements: past every 32-bit index


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _need(bytes_needed: int) -> None:
    available = _meminfo("MemAvailable")
    if available is None:
        pytest.skip("cannot read MemAvailable from /proc/meminfo")
    if available < 2 * bytes_needed:
        pytest.skip(
            f"needs {bytes_needed / GIB:.1f} GiB (skips below twice that available), "
            f"{available / GIB:.1f} GiB available"
        )


# ---- resident memory over 10,000 calls ---------------------------------------------------------

CONFIG = KVQuantConfig(1.5, 1.58, group_size=4, residual_length=0)


def _calls():
    frames = torch.randn(3, 17, 8)
    video = torch.randn(4, 9, 8)
    keys = torch.randn(1, 2, 9, 16)
    rows = torch.randn(33, 8)
    index = torch.tensor([3, 1, 30, 7])
    return {
        "drop_redundant_tokens": lambda: ops.drop_redundant_tokens(frames, 0.1),
        "hierarchical_merge": lambda: ops.hierarchical_merge(
            video, frames_per_segment=2, tokens_per_segment=5, metric_chunks=2
        ),
        "quantize/dequantize_keys": lambda: ops.dequantize_keys(ops.quantize_keys(keys, CONFIG)),
        "gather_rows": lambda: ops.gather_rows(rows, index),
        "bad argument": lambda: _raises(lambda: ops.gather_rows(rows, index + 100)),
    }


def _raises(call) -> None:
    try:
        call()
    except ValueError:
        return
    raise AssertionError("expected ValueError")


@pytest.mark.parametrize("name", list(_calls()))
def test_resident_memory_is_flat_over_10000_calls(name):
    call = _calls()[name]
    for _ in range(500):  # warm-up: allocator pools, lazily built tables
        call()
    gc.collect()
    before = _rss()
    for _ in range(10_000):
        call()
    gc.collect()
    grown = _rss() - before
    assert grown <= 5 * MIB, f"{name}: RSS grew {grown / MIB:.1f} MiB over 10,000 calls"


# ---- one input of more than 2^31 elements per family -------------------------------------------


@pytest.mark.bigmem
def test_kv_pack_bits_past_2_31_elements():
    _need(BIG * 2 + BIG // 8)
    codes = torch.zeros(BIG, dtype=torch.uint8)
    marked = torch.tensor([0, 2**31 - 1, 2**31, 2**31 + 3, BIG - 1])
    codes[marked] = 1
    packed = ops.pack_bits(codes, 1)
    assert packed.shape == (-(-BIG // 8),)
    nonzero = packed.nonzero().flatten()
    assert nonzero.tolist() == sorted({int(m) // 8 for m in marked})
    del codes
    unpacked = ops.unpack_bits(packed, 1, BIG)
    assert unpacked.nonzero().flatten().tolist() == marked.tolist()


@pytest.mark.bigmem
def test_dtd_compact_tokens_past_2_31_mask_elements():
    steps, tokens = 2, 2**30 + 5
    _need(steps * tokens)
    keep_mask = torch.zeros(steps, tokens, dtype=torch.bool)
    keep_mask[0, 7] = keep_mask[1, tokens - 1] = True
    # frames [steps, tokens, 1]: a zero-stride float view (no memory), 2^31 + 10 elements.
    frames = torch.tensor([[[1.5]]]).expand(steps, tokens, 1)
    kept, kept_index, counts = ops.compact_tokens(frames, keep_mask)
    assert kept_index.tolist() == [7, tokens + tokens - 1]
    assert counts.tolist() == [1, 1] and kept.flatten().tolist() == [1.5, 1.5]


@pytest.mark.bigmem
def test_dtd_refuses_more_than_2_31_tokens_per_step():
    frames = torch.tensor([[[0.5]]]).expand(2, 2**31, 1)
    with pytest.raises(ValueError, match="2\\^31"):
        ops.dtd_keep_mask(frames, 0.5)


@pytest.mark.bigmem
def test_routing_refuses_more_than_2_31_scores():
    scores = torch.tensor([0.5]).expand(2**31)
    offsets = torch.tensor([0, 2**31])
    with pytest.raises(ValueError, match="2\\^31"):
        ops.topk_per_segment(scores, offsets, 0.5)


@pytest.mark.bigmem
def test_merge_refuses_segments_past_2_31_tokens():
    tokens = torch.tensor([[[0.5]]]).expand(2, 2**30 + 1, 1)
    with pytest.raises(ValueError, match="2\\^31"):
        ops.hierarchical_merge(tokens, frames_per_segment=2, tokens_per_segment=4, metric_chunks=1)
