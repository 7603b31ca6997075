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

import torch
from torch import Tensor

from vidllm_ext.reference import kv_quant as scheme


def _dequantized(block, exact, dtype: torch.dtype) -> Tensor:
    if isinstance(block, Tensor):
        return block.to(dtype)
    # float64: exact from the codes; otherwise rounded to float32 first, as the kernels compute
    return exact(block) if dtype == torch.float64 else exact(block).float().to(dtype)


def dequantized_layer(layer_state, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Keys and values [B, Hkv, T, D] of every cached token in ``dtype``, quantized part first
    (float64: exact from the codes; otherwise those values rounded to float32 first)."""
    keys = [_dequantized(b, scheme.exact_keys, dtype) for b in layer_state.key_blocks]
    values = [_dequantized(b, scheme.exact_values, dtype) for b in layer_state.value_blocks]
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
