"""Sub-2-bit KV quantization (VidKV, KIVI) on the C++/CUDA group kernels.

The scheme (channel split, orthonormal key transform, salient tokens) is the one of
:mod:`vidllm_ext.reference.kv`, composed over the kernels of :mod:`vidllm_ext.ops.kv_pack`
instead of their PyTorch references: the group statistics, rounding and bit packing run in C++
or CUDA; the small per-token transform is a float32 matmul, identical in both.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from vidllm_ext._packed_checks import check_packed_keys, check_packed_values
from vidllm_ext.kv_config import KVQuantConfig
from vidllm_ext.kv_types import PackedKeys, PackedValues
from vidllm_ext.ops import kv_pack
from vidllm_ext.reference import kv as scheme


def quantize_keys(
    k: Tensor, config: KVQuantConfig, channel_split: Optional[Tensor] = None
) -> PackedKeys:
    """Quantize keys [B, H, T, D] into 2-bit and transformed 1-bit channels.

    Args:
        k: [B, H, T, D] float32/float16/bfloat16 keys (CPU or CUDA).
        config: the :class:`vidllm_ext.KVQuantConfig` (``key_bits`` in [1, 2]).
        channel_split: int64 [H, D2] channels kept at 2 bits per head; by default the D2 with
            the largest range over batch and tokens (the cache fixes it at its first flush).

    Returns:
        :class:`vidllm_ext.PackedKeys`; ``.nbytes`` counts every stored byte. The last token group
        may be partial (T need not be a multiple of ``group_size``).
    """
    _refuse_meta(k=k, channel_split=channel_split)
    return scheme.quantize_keys_with(kv_pack, k, _check_config(config), channel_split)


def dequantize_keys(packed: PackedKeys) -> Tensor:
    """Keys [B, H, T, D] in their original dtype, restored from ``packed``.

    ``packed``'s tensors are checked against each other first (shapes, dtypes, devices; the
    channel split's range on the CPU, see :mod:`vidllm_ext._structure_checks`): ValueError or
    TypeError naming the field.
    """
    return scheme.dequantize_keys_with(kv_pack, check_packed_keys(packed))


def quantize_values(
    v: Tensor, config: KVQuantConfig, salient: Optional[Tensor] = None
) -> PackedValues:
    """Quantize values [B, H, T, D] at 2 bits (per channel or KIVI per token) or 1.58 bits.

    Args:
        v: [B, H, T, D] values.
        config: the :class:`vidllm_ext.KVQuantConfig` (``value_bits`` 2 or 1.58).
        salient: with 1.58-bit values, a bool mask [T] or [B, T] (the same count in every row)
            of tokens stored at 2 bits instead, in channel groups formed from those tokens alone
            (VidKV).
    """
    _refuse_meta(v=v, salient=salient)
    return scheme.quantize_values_with(kv_pack, v, _check_config(config), salient)


def dequantize_values(packed: PackedValues) -> Tensor:
    """Values [B, H, T, D] in their original dtype, salient tokens back in place.

    ``packed`` is checked like in :func:`dequantize_keys` (salient positions' range on the CPU).
    """
    return scheme.dequantize_values_with(kv_pack, check_packed_values(packed))


def _refuse_meta(**tensors: object) -> None:
    for name, value in tensors.items():
        if isinstance(value, Tensor) and value.device.type == "meta":
            raise ValueError(f"{name}: expected a CPU or CUDA tensor, got a meta tensor")


def _check_config(config: object) -> KVQuantConfig:
    if not isinstance(config, KVQuantConfig):
        what = f"the class {config.__name__}" if isinstance(config, type) else type(config).__name__
        raise TypeError(f"config: expected a KVQuantConfig instance, got {what}")
    return config
