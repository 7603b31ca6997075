"""Cache layers and the comparison rule for the packed attention tests."""

from __future__ import annotations

import torch

from support.helpers import assert_close_to_oracle
from support.kv import KV_CONFIGS, outlier_kv
from vidllm_ext import KVQuantConfig, PackedKVCache, reference

# The shared configurations, and group size 32, 1-bit keys, bfloat16 scales, salient tokens.
CONFIGS = {
    **KV_CONFIGS,
    "1.5/1.58-g32": KVQuantConfig(1.5, 1.58, group_size=32, residual_length=32),
    "1/1.58": KVQuantConfig(1, 1.58, group_size=8, residual_length=8),
    "1.5/1.58-bf16": KVQuantConfig(
        1.5, 1.58, group_size=8, residual_length=8, scale_dtype="bfloat16"
    ),
    "1.5/1.58-salient": KVQuantConfig(
        1.5, 1.58, group_size=8, residual_length=8, salient_ratio=0.25
    ),
}


def cache_layer(
    config,
    tokens,
    *,
    batch=2,
    kv_heads=2,
    dim=16,
    chunks=None,
    device="cpu",
    dtype=torch.float32,
    seed=0,
):
    """Layer 0 of a PackedKVCache fed ``tokens`` random outlier-heavy tokens (in ``chunks``)."""
    keys = outlier_kv(batch, kv_heads, tokens, dim, seed=seed).to(device, dtype)
    values = outlier_kv(batch, kv_heads, tokens, dim, seed=seed + 1).to(device, dtype)
    cache = PackedKVCache(config)
    if config.salient_ratio:
        generator = torch.Generator().manual_seed(seed + 2)
        salient = torch.rand(batch, tokens, generator=generator) < config.salient_ratio
        cache.mark_salient(salient, 0)
    start = 0
    for size in chunks or [tokens]:
        cache.update(keys[:, :, start : start + size], values[:, :, start : start + size], 0)
        start += size
    return cache.layers[0]


def queries(batch, q_heads, q_len, dim, *, dtype=torch.float32, device="cpu", seed=5):
    """Random queries at 0.1: against the outlier keys that puts scores in the tens, as in real
    models. Unit queries would give scores in the hundreds, a one-hot softmax whose float32
    error (ours and PyTorch's alike) is a matter of luck rather than of the arithmetic."""
    generator = torch.Generator().manual_seed(seed)
    q = 0.1 * torch.randn(batch, q_heads, q_len, dim, generator=generator)
    return q.to(device, dtype)


def assert_matches_reference(out, q, layer, mask=None):
    """The float policy against the float64 oracle, PyTorch's own error in q's dtype."""
    oracle = reference.packed_attention(q, layer, mask=mask, compute_dtype=torch.float64)
    torch_result = reference.packed_attention(q, layer, mask=mask, compute_dtype=q.dtype)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close_to_oracle(out, torch_result, oracle)
