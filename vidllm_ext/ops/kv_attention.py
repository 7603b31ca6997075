"""Attention that reads a PackedKVCache layer directly (codes, statistics and the window).

:func:`packed_attention` cuts the layer into segments (see ``_attention_segments``), runs the
``vidllm::packed_attention_segment_`` kernel once per segment (split-KV partials: running max,
sum and unnormalized output per split) and merges them with ``vidllm::packed_attention_combine``.
No dequantized key or value is written to memory: 2-bit, 1-bit and ternary codes are decoded in
registers, key statistics are folded into the query once per key group and value statistics
into the sums once per tile.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.contracts.checks import check_float_tensor
from vidllm_ext.contracts.kv_attention import check_packed_layer
from vidllm_ext.ops import _kv_attention_segments as seg
from vidllm_ext.ops._backend import C, dl, rows_contiguous, stream_of, writes_into

_SCALE_TYPES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float8_e4m3fn: "float8_e4m3fn",
}


def _raw(stats: Optional[Tensor]) -> Optional[Tensor]:
    """Statistics as the kernel reads them: float8 as its bytes (DLPack has no float8)."""
    if stats is not None and stats.dtype == torch.float8_e4m3fn:
        return stats.view(torch.uint8)
    return stats


@writes_into("packed_attention_segment_", ("part_max", "part_sum", "part_acc"))
def _segment_op(
    q_full: Optional[Tensor],
    q_packed: Optional[Tensor],
    query_start: int,
    key_format: str,
    keys: Optional[Tensor],
    codes2: Optional[Tensor],
    scale2: Optional[Tensor],
    zero2: Optional[Tensor],
    codes1: Optional[Tensor],
    alpha1: Optional[Tensor],
    key_group_size: int,
    key_position_start: int,
    value_format: str,
    values: Optional[Tensor],
    value_codes: Optional[Tensor],
    value_scale: Optional[Tensor],
    value_zero: Optional[Tensor],
    value_group_size: int,
    scale_type: torch.dtype,
    token_map: Optional[Tensor],
    key_start: int,
    split_rows: int,
    split_offset: int,
    mask: Optional[Tensor],
    part_max: Tensor,
    part_sum: Tensor,
    part_acc: Tensor,
) -> None:
    if scale_type not in _SCALE_TYPES:
        raise ValueError(f"scale_type must be one of {list(_SCALE_TYPES)}, got {scale_type}")
    key_tensors = (keys, codes2, _raw(scale2), _raw(zero2), codes1, _raw(alpha1))
    value_tensors = (values, value_codes, _raw(value_scale), _raw(value_zero))
    C.kv_attention_segment(
        dl(q_full),
        dl(q_packed),
        query_start,
        key_format,
        *map(dl, key_tensors),
        key_group_size,
        key_position_start,
        value_format,
        *map(dl, value_tensors),
        value_group_size,
        _SCALE_TYPES[scale_type],
        dl(token_map),
        key_start,
        split_rows,
        split_offset,
        dl(mask),
        dl(part_max),
        dl(part_sum),
        dl(part_acc),
        stream_of(part_max),
    )


@torch.library.custom_op("vidllm::packed_attention_combine", mutates_args=())
def _combine_op(part_max: Tensor, part_sum: Tensor, part_acc: Tensor, dtype: torch.dtype) -> Tensor:
    out = part_acc.new_empty((*part_max.shape[:3], part_acc.shape[-1]), dtype=dtype)
    C.kv_attention_combine(dl(part_max), dl(part_sum), dl(part_acc), dl(out), stream_of(out))
    return out


@_combine_op.register_fake
def _(part_max, part_sum, part_acc, dtype):
    return part_acc.new_empty((*part_max.shape[:3], part_acc.shape[-1]), dtype=dtype)


def _check(q: Tensor, layer_state, scale) -> float:
    check_float_tensor(q, "q", "[B, Hq, Lq, D]")
    if not getattr(layer_state, "is_initialized", False) or not hasattr(layer_state, "key_blocks"):
        raise ValueError("layer_state must be an initialized PackedKVCache layer (cache.layers[i])")
    check_packed_layer(layer_state)
    batch, q_heads, q_len, dim = q.shape
    window = layer_state.keys
    if q.device != window.device:
        raise ValueError(f"q is on {q.device}, the cache layer on {window.device}")
    if window.shape[0] != batch:
        raise ValueError(f"q has batch {batch}, the cache layer holds {window.shape[0]}")
    if dim != window.shape[3]:
        raise ValueError(f"q has head_dim {dim}, the cache layer's heads have {window.shape[3]}")
    kv_heads = window.shape[1]
    if q_heads % kv_heads:
        raise ValueError(
            f"q has {q_heads} heads, which is not a multiple of the cache's {kv_heads} KV heads"
        )
    cached = layer_state.get_seq_length()
    if q_len < 1 or q_len > cached:
        raise ValueError(
            f"q holds {q_len} queries; they must be the newest of the {cached} cached tokens"
        )
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


def _check_mask(mask: Optional[Tensor], q: Tensor, cached: int) -> Optional[Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor [B, Lq, T] or [B, 1, Lq, T] (True = attend)")
    if mask.device.type == "meta":
        raise ValueError("mask: expected a CPU or CUDA tensor, got a meta tensor")
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError("mask: per-head masks are not supported; give [B, 1, Lq, T]")
        mask = mask[:, 0]
    expected = (q.shape[0], q.shape[2], cached)
    if mask.dim() != 3 or tuple(mask.shape) != expected:
        raise ValueError(f"mask must be [B, Lq, T] = {list(expected)}, got {tuple(mask.shape)}")
    return mask.to(q.device)


def packed_attention(
    q: Tensor, layer_state, *, scale: Optional[float] = None, mask: Optional[Tensor] = None
) -> Tensor:
    """Attention of q over every token of one PackedKVCache layer, reading the packed codes.

    Args:
        q: [B, Hq, Lq, D] float32/float16/bfloat16 queries: the newest Lq cached tokens (decode:
            Lq = 1; chunked prefill and streaming frames: Lq > 1, causal). Hq must be a
            multiple of the cache's KV heads (GQA).
        layer_state: ``cache.layers[i]`` of a :class:`vidllm_ext.PackedKVCache`, after the
            step's ``update``. Its window and blocks are checked against each other first
            (shapes, dtypes, devices; index ranges on the CPU, see
            :mod:`vidllm_ext.contracts.structure`).
        scale: softmax scale; 1 / sqrt(D) by default.
        mask: optional bool [B, Lq, T] or [B, 1, Lq, T] over all T cached tokens (True =
            attend), applied on top of causality (padding).

    Returns:
        [B, Hq, Lq, D] in q's dtype. Accumulation and softmax in float32; a query that sees no
        token gets zeros.
    """
    scale = _check(q, layer_state, scale)
    cached = layer_state.get_seq_length()
    mask = _check_mask(mask, q, cached)
    kv_heads = layer_state.keys.shape[1]
    segments = seg.layer_segments(layer_state)
    splits = seg.assign_splits(segments, q, kv_heads)
    q_full = seg.scale_query(q, scale)
    packed_keys = seg.packed_keys_of(layer_state)
    q_packed = None if packed_keys is None else seg.packed_queries(q_full, packed_keys)
    batch, q_heads, q_len, dim = q.shape
    part_max = torch.empty(batch, q_heads, q_len, splits, device=q.device)
    part_sum = torch.empty_like(part_max)
    part_acc = torch.empty(batch, q_heads, q_len, splits, dim, device=q.device)
    scale_type = seg.scale_dtype_of(layer_state)
    for s in segments:
        k = s.keys
        _segment_op(
            q_full,
            q_packed if k.format == "packed" else None,
            cached - q_len,
            k.format,
            None if k.keys is None else rows_contiguous(k.keys),
            k.codes2,
            k.scale2,
            k.zero2,
            k.codes1,
            k.alpha1,
            k.group_size,
            k.position_start,
            s.value_format,
            None if s.values is None else rows_contiguous(s.values),
            s.codes,
            s.scale,
            s.zero,
            s.group_size,
            scale_type,
            s.token_map,
            s.key_start,
            s.split_rows,
            s.split_offset,
            mask,
            part_max,
            part_sum,
            part_acc,
        )
    return _combine_op(part_max, part_sum, part_acc, q.dtype)
