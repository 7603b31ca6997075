"""Attention over a PackedKVCache layer in plain PyTorch: the oracle of ``ops.packed_attention``.

The quantized part is dequantized in ``compute_dtype`` straight from the codes and the stored
statistics (float32: the reference dequantizers, no rounding to the cache dtype; float64: the
same formulas in float64, the exact values the codes stand for), followed by the full-precision
window; attention is causal with the queries as the newest ``Lq`` cached tokens, GQA by
repeating KV heads, an optional boolean mask on top, softmax in ``compute_dtype``. A query that
sees no key at all gets zeros.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from vidllm_ext.kv_types import PackedKeys, PackedValues
from vidllm_ext.reference import kv as scheme
from vidllm_ext.reference.kv_pack import _BITS1, _BITS2, _MODE_LAYOUT, _unpack_digits


def _per_token(stats: Tensor, group_size: int, tokens: int) -> Tensor:
    """[B, H, T, C] float64 from per-group statistics [B, H, NG, C]."""
    return stats.double().repeat_interleave(group_size, dim=2)[:, :, :tokens]


def _digits(codes: Tensor, layout, count: int) -> Tensor:
    return _unpack_digits(codes, layout)[..., :count].double()


def _scatter_channels(out: Tensor, channels: Tensor, x: Tensor) -> None:
    index = channels.to(out.device)[None, :, None, :].expand(*x.shape)
    out.scatter_(3, index, x)


def exact_keys(block: PackedKeys) -> Tensor:
    """float64 [B, H, T, D]: code * s + m and M^T (+-alpha) computed in float64."""
    batch, heads, tokens, dim = block.shape
    out = torch.zeros(batch, heads, tokens, dim, dtype=torch.float64, device=block.codes2.device)
    two_bit, group = block.two_bit_channels, block.group_size
    if two_bit:
        x = _digits(block.codes2, _BITS2, two_bit) * _per_token(block.scale2, group, tokens)
        _scatter_channels(out, block.channels2, x + _per_token(block.zero2, group, tokens))
    one_bit = dim - two_bit
    if one_bit:
        alpha = _per_token(block.alpha1, group, tokens)
        signs = torch.where(_digits(block.codes1, _BITS1, one_bit) == 1, alpha, -alpha)
        matrix = scheme.transform_matrix(block.transform, one_bit, out.device).double()
        _scatter_channels(out, block.channels1, signs @ matrix)
    return out


def _exact_value_rows(codes, scale, zero, mode: str, group: int, dim: int) -> Tensor:
    tokens = codes.shape[2]
    if mode == "token2":
        scale, zero = (s.double().repeat_interleave(group, dim=3)[..., :dim] for s in (scale, zero))
        return _digits(codes, _BITS2, dim) * scale + zero
    digits = _digits(codes, _MODE_LAYOUT[mode], dim)
    if mode == "trit":
        return (digits - 1) * _per_token(scale, group, tokens)
    return digits * _per_token(scale, group, tokens) + _per_token(zero, group, tokens)


def exact_values(block: PackedValues) -> Tensor:
    """float64 [B, H, T, D] values, salient tokens back at their positions."""
    group, dim = block.group_size, block.head_dim
    regular = _exact_value_rows(block.codes, block.scale, block.zero, block.mode, group, dim)
    if block.salient_index is None:
        return regular
    salient = _exact_value_rows(
        block.salient_codes, block.salient_scale, block.salient_zero, "minmax2", group, dim
    )
    batch, heads, tokens, _ = block.shape
    out = regular.new_empty(batch, heads, tokens, dim)
    for index, rows in ((block.regular_index, regular), (block.salient_index, salient)):
        out.scatter_(2, index[:, None, :, None].expand(batch, heads, index.shape[1], dim), rows)
    return out


def _dequantized(block, dequantize, exact, dtype: torch.dtype) -> Tensor:
    if isinstance(block, Tensor):
        return block.to(dtype)
    if dtype == torch.float64:
        return exact(block)
    return dequantize(replace(block, dtype=torch.float32)).to(dtype)


def dequantized_layer(layer_state, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Keys and values [B, Hkv, T, D] of every cached token in ``dtype``, quantized part first
    (float64: exact from the codes; otherwise the float32 reference dequantizers)."""
    keys = [
        _dequantized(b, scheme.dequantize_keys, exact_keys, dtype) for b in layer_state.key_blocks
    ]
    values = [
        _dequantized(b, scheme.dequantize_values, exact_values, dtype)
        for b in layer_state.value_blocks
    ]
    keys.append(layer_state.keys.to(dtype))
    values.append(layer_state.values.to(dtype))
    return torch.cat(keys, 2), torch.cat(values, 2)


def packed_attention(
    q: Tensor,
    layer_state,
    *,
    scale: float | None = None,
    mask: Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """[B, Hq, Lq, D] in q's dtype; see :func:`vidllm_ext.ops.packed_attention`."""
    keys, values = dequantized_layer(
        layer_state, torch.float64 if compute_dtype == torch.float64 else torch.float32
    )
    batch, q_heads, q_len, dim = q.shape
    group = q_heads // keys.shape[1]
    keys = keys.repeat_interleave(group, 1).to(compute_dtype)
    values = values.repeat_interleave(group, 1).to(compute_dtype)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    scores = (q.to(compute_dtype) @ keys.transpose(-1, -2)) * scale
    tokens = keys.shape[2]
    positions = torch.arange(tokens, device=q.device)
    query_positions = tokens - q_len + torch.arange(q_len, device=q.device)
    visible = (positions[None, :] <= query_positions[:, None]).expand(batch, 1, q_len, tokens)
    if mask is not None:
        visible = visible & (mask if mask.dim() == 4 else mask[:, None]).to(torch.bool)
    probs = torch.softmax(scores.masked_fill(~visible, -math.inf), -1)
    probs = torch.where(visible.any(-1, keepdim=True), probs, torch.zeros_like(probs))
    return (probs @ values).to(q.dtype)
