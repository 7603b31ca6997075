"""ops.packed_attention against dequantize + attention: every cache configuration, cache lengths
around the window and group boundaries, decode and chunked prefill, GQA, dtypes, padding."""

from dataclasses import replace

import pytest
import torch
from conftest import DEVICES
from support.kv_attention_cases import (
    CONFIGS,
    assert_matches_reference,
    cache_layer,
    queries,
)

from vidllm_ext import KVQuantConfig, ops
from vidllm_ext.ops import _kv_attention_segments as _attention_segments


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("q_len", [1, 7])
def test_every_configuration_matches_the_reference(device, name, q_len):
    layer = cache_layer(CONFIGS[name], 70, device=device, chunks=[40, 23, 7])
    assert layer.quantized_length > 0
    q = queries(2, 4, q_len, 16, device=device)
    assert_matches_reference(ops.packed_attention(q, layer), q, layer)


def lengths_around_boundaries(config):
    """1, residual-only, the first flush's group boundary -1 / 0 / +1, and 4097."""
    first_flush = config.residual_length + config.group_size
    return [1, config.residual_length, first_flush - 1, first_flush, first_flush + 1, 4097]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["1.5/1.58", "kivi-2/2-token", "1.5/1.58-salient"])
@pytest.mark.parametrize("index", range(6))
def test_cache_lengths_around_the_window_and_group_boundaries(device, name, index):
    config = CONFIGS[name]
    tokens = lengths_around_boundaries(config)[index]
    layer = cache_layer(config, tokens, batch=1, device=device)
    q = queries(1, 2, 1, 16, device=device)
    assert_matches_reference(ops.packed_attention(q, layer), q, layer)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("q_len", [1, 7, 64])
@pytest.mark.parametrize("group", [1, 4, 7])
def test_chunked_prefill_and_gqa(device, q_len, group):
    layer = cache_layer(CONFIGS["1.5/1.58"], 131, kv_heads=2, device=device)
    q = queries(2, 2 * group, q_len, 16, device=device)
    assert_matches_reference(ops.packed_attention(q, layer), q, layer)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_queries_and_cache(device, dtype):
    layer = cache_layer(CONFIGS["1.5/1.58"], 90, device=device, dtype=dtype)
    q = queries(2, 4, 3, 16, dtype=dtype, device=device)
    assert_matches_reference(ops.packed_attention(q, layer), q, layer)


@pytest.mark.parametrize("device", DEVICES)
def test_head_dim_128_and_odd_head_dims(device):
    for dim in (128, 7, 257):
        config = KVQuantConfig(1.5, 1.58, group_size=8, residual_length=8)
        layer = cache_layer(config, 45, batch=1, dim=dim, device=device)
        q = queries(1, 4, 2, dim, device=device)
        assert_matches_reference(ops.packed_attention(q, layer), q, layer)


@pytest.mark.parametrize("device", DEVICES)
def test_padding_mask_on_top_of_causality(device):
    layer = cache_layer(CONFIGS["2/2-channel"], 60, device=device)
    q = queries(2, 4, 5, 16, device=device)
    mask = torch.ones(2, 5, 60, dtype=torch.bool, device=device)
    mask[1, :, :13] = False  # left padding of sample 1
    mask[0, 2, :] = False  # a query that sees nothing gets zeros
    out = ops.packed_attention(q, layer, mask=mask)
    assert_matches_reference(out, q, layer, mask=mask)
    assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    four_d = ops.packed_attention(q, layer, mask=mask[:, None])
    assert torch.equal(out, four_d)


@pytest.mark.parametrize("device", DEVICES)
def test_many_splits_cut_inside_groups(device, monkeypatch):
    monkeypatch.setitem(_attention_segments.MIN_SPLIT_ROWS, "cpu", 5)
    monkeypatch.setitem(_attention_segments.MIN_SPLIT_ROWS, "cuda", 5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    layer = cache_layer(CONFIGS["1.5/1.58-salient"], 203, batch=2, device=device)
    q = queries(2, 4, 3, 16, device=device)
    segments = _attention_segments.layer_segments(layer)
    assert _attention_segments.assign_splits(segments, q, 2) > 2 * len(segments)
    assert_matches_reference(ops.packed_attention(q, layer), q, layer)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_and_scale_argument(device):
    layer = cache_layer(CONFIGS["1.5/1.58"], 77, device=device)
    q = queries(2, 4, 2, 16, device=device)
    assert torch.equal(ops.packed_attention(q, layer), ops.packed_attention(q, layer))
    out = ops.packed_attention(q, layer, scale=0.3)
    assert torch.allclose(out, ops.packed_attention(q * (0.3 * 4), layer), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_query_gives_nan_rows_only(device):
    layer = cache_layer(CONFIGS["1.5/1.58"], 50, device=device)
    q = queries(2, 4, 1, 16, device=device)
    q[1, 3, 0, 5] = float("nan")
    out = ops.packed_attention(q, layer)
    assert out[1, 3].isnan().all()
    assert not out[0].isnan().any() and not out[1, :3].isnan().any()


def test_noncontiguous_query():
    layer = cache_layer(CONFIGS["1.5/1.58"], 50)
    q = queries(2, 4, 3, 32)[..., ::2]
    assert not q.is_contiguous()
    assert_matches_reference(ops.packed_attention(q, layer), q, layer)


@pytest.mark.parametrize("name", ["1.5/1.58-fp8", "1.5/1.58-bf16", "1.5/1.58"])
def test_statistics_are_read_exactly_in_their_stored_dtype(name):
    """float8 / bfloat16 / float16 statistics read by the kernel equal their float32 values."""
    layer = cache_layer(CONFIGS[name], 70)
    q = queries(2, 4, 3, 16)
    stored = ops.packed_attention(q, layer)
    keys = layer.key_blocks[0]
    layer.key_blocks = [
        replace(
            keys, scale2=keys.scale2.float(), zero2=keys.zero2.float(), alpha1=keys.alpha1.float()
        )
    ]
    layer.value_blocks = [
        replace(v, scale=v.scale.float(), zero=None if v.zero is None else v.zero.float())
        for v in layer.value_blocks
    ]
    assert torch.equal(stored, ops.packed_attention(q, layer))
