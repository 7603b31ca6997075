"""How ``ops.packed_attention`` cuts a PackedKVCache layer into kernel segments.

A segment is a run of cached tokens with one key layout and one value layout: per value block of
the quantized part (its regular rows, and its salient rows apart, each with a per-sample map to
the key tokens they belong to), then the full-precision window. Each segment is split along its
rows so that the device has enough independent work (split-KV); the combine step merges them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.contracts.kv_quant import PackedKeys, PackedValues
from vidllm_ext.ops.kv_quant import transform_matrix

LOG2E = 1.4426950408889634
VALUE_FORMATS = {"minmax2": "channel2", "trit": "trit", "token2": "token2"}
# Rows a split reads at least: fewer would spend more on partials and combine than on tokens.
MIN_SPLIT_ROWS = {"cuda": 256, "cpu": 2048}


@dataclass
class KeyArgs:
    """The keys a segment reads (kernel arguments of one key source)."""

    format: str  # "full" or "packed"
    position_start: int
    keys: Optional[Tensor] = None
    codes2: Optional[Tensor] = None
    scale2: Optional[Tensor] = None
    zero2: Optional[Tensor] = None
    codes1: Optional[Tensor] = None
    alpha1: Optional[Tensor] = None
    group_size: int = 1


@dataclass
class SegmentArgs:
    keys: KeyArgs
    value_format: str
    rows: int
    key_start: int = 0
    token_map: Optional[Tensor] = None
    values: Optional[Tensor] = None
    codes: Optional[Tensor] = None
    scale: Optional[Tensor] = None
    zero: Optional[Tensor] = None
    group_size: int = 1
    split_rows: int = 1
    split_offset: int = 0

    @property
    def splits(self) -> int:
        return -(-self.rows // self.split_rows)


def _key_args(block, position_start: int) -> KeyArgs:
    if isinstance(block, Tensor):
        return KeyArgs("full", position_start, keys=block)
    return KeyArgs(
        "packed",
        position_start,
        codes2=block.codes2.contiguous(),
        scale2=block.scale2.contiguous(),
        zero2=block.zero2.contiguous(),
        codes1=block.codes1.contiguous(),
        alpha1=block.alpha1.contiguous(),
        group_size=block.group_size,
    )


def _value_segments(block, keys: KeyArgs, start: int) -> list[SegmentArgs]:
    """Segments of one value block whose first token is key token ``start``."""
    if isinstance(block, Tensor):
        return [SegmentArgs(keys, "full", block.shape[2], start, values=block)]
    regular = SegmentArgs(
        keys,
        VALUE_FORMATS[block.mode],
        block.codes.shape[2],
        start,
        codes=block.codes.contiguous(),
        scale=block.scale.contiguous(),
        zero=None if block.zero is None else block.zero.contiguous(),
        group_size=block.group_size,
    )
    if block.salient_index is None:
        return [regular]
    regular.token_map = (block.regular_index + start).contiguous()
    salient = SegmentArgs(
        keys,
        "channel2",
        block.salient_index.shape[1],
        start,
        token_map=(block.salient_index + start).contiguous(),
        codes=block.salient_codes.contiguous(),
        scale=block.salient_scale.contiguous(),
        zero=block.salient_zero.contiguous(),
        group_size=block.group_size,
    )
    return [regular, salient]


def layer_segments(layer_state) -> list[SegmentArgs]:
    """Every segment of a layer: the quantized part's value blocks, then the window."""
    segments = []
    if layer_state.key_blocks:
        keys = _key_args(layer_state.key_blocks[0], 0)
        start = 0
        for block in layer_state.value_blocks:
            segments += _value_segments(block, keys, start)
            start += block.shape[2]
    window = KeyArgs("full", layer_state.quantized_length, keys=layer_state.keys)
    segments.append(
        SegmentArgs(window, "full", layer_state.keys.shape[2], values=layer_state.values)
    )
    return [s for s in segments if s.rows > 0]


def packed_keys_of(layer_state) -> PackedKeys | None:
    blocks = layer_state.key_blocks
    return blocks[0] if blocks and isinstance(blocks[0], PackedKeys) else None


def scale_dtype_of(layer_state) -> torch.dtype:
    """The statistics' storage dtype (one per cache; float16 when nothing is packed)."""
    for block in [*layer_state.key_blocks, *layer_state.value_blocks]:
        if isinstance(block, PackedKeys):
            return block.scale2.dtype
        if isinstance(block, PackedValues):
            return block.scale.dtype
    return torch.float16


def packed_queries(q_scaled: Tensor, keys: PackedKeys) -> Tensor:
    """[q at the 2-bit channels | M q at the 1-bit channels] per head (M: the key transform), so
    scores against packed keys need no inverse transform: (M^T y) . q = y . (M q)."""
    batch, q_heads, q_len, dim = q_scaled.shape
    kv_heads = keys.shape[1]
    grouped = q_scaled.view(batch, kv_heads, q_heads // kv_heads, q_len, dim)

    def take(channels: Tensor) -> Tensor:
        if channels.numel() == 0:
            return grouped[..., :0]
        index = channels.to(q_scaled.device)[None, :, None, None, :]
        return torch.gather(grouped, 4, index.expand(*grouped.shape[:4], channels.shape[1]))

    one_bit = dim - keys.two_bit_channels
    matrix = transform_matrix(keys.transform, one_bit, q_scaled.device)
    parts = [take(keys.channels2), take(keys.channels1) @ matrix.T]
    return torch.cat(parts, -1).reshape(batch, q_heads, q_len, dim).contiguous()


@lru_cache(maxsize=8)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def assign_splits(segments: list[SegmentArgs], q: Tensor, kv_heads: int) -> int:
    """Sets every segment's split_rows and split_offset; returns the total number of splits."""
    batch, q_heads, q_len, _ = q.shape
    if q.device.type == "cuda":
        query_tiles = -(-(q_heads // kv_heads) * q_len // 16)
        target = 2 * _multiprocessors(q.device.index or 0)
    else:
        query_tiles = 1
        target = 2 * torch.get_num_threads()
    independent = max(1, batch * kv_heads * query_tiles)
    wanted = max(1, math.ceil(target / independent))
    min_rows = MIN_SPLIT_ROWS["cuda" if q.device.type == "cuda" else "cpu"]
    offset = 0
    for segment in segments:
        splits = max(1, min(wanted, -(-segment.rows // min_rows)))
        segment.split_rows = -(-segment.rows // splits)
        segment.split_offset = offset
        offset += segment.splits
    return offset


def scale_query(q: Tensor, scale: float) -> Tensor:
    """float32 q times softmax scale * log2(e): the kernels compute softmax in base 2."""
    return (q.float() * (scale * LOG2E)).contiguous()
