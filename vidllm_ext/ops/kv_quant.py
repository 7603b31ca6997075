"""Sub-2-bit KV quantization (VidKV, KIVI) on the C++/CUDA group kernels.

The scheme (channel split, orthonormal key transform, salient tokens; see
:mod:`vidllm_ext.reference.kv_quant` for its definition and float64 oracle) is composed here over
the kernels of :mod:`vidllm_ext.ops.kv_quant_pack`: the group statistics, rounding and bit
packing run in C++ or CUDA; the small per-token transform is a float32 matmul.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.contracts import kv_quant as check
from vidllm_ext.contracts.kv_attention import check_packed_keys, check_packed_values
from vidllm_ext.contracts.kv_quant import (
    KVQuantConfig,
    PackedKeys,
    PackedValues,
)
from vidllm_ext.ops import kv_quant_pack as kv_pack


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
    return _quantize_keys(k, _check_config(config), channel_split)


def dequantize_keys(packed: PackedKeys) -> Tensor:
    """Keys [B, H, T, D] in their original dtype, restored from ``packed``.

    ``packed``'s tensors are checked against each other first (shapes, dtypes, devices; the
    channel split's range on the CPU, see :mod:`vidllm_ext.contracts.structure`): ValueError or
    TypeError naming the field.
    """
    return _dequantize_keys(check_packed_keys(packed))


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
    return _quantize_values(v, _check_config(config), salient)


def dequantize_values(packed: PackedValues) -> Tensor:
    """Values [B, H, T, D] in their original dtype, salient tokens back in place.

    ``packed`` is checked like in :func:`dequantize_keys` (salient positions' range on the CPU).
    """
    return _dequantize_values(check_packed_values(packed))


def _refuse_meta(**tensors: object) -> None:
    for name, value in tensors.items():
        if isinstance(value, Tensor) and value.device.type == "meta":
            raise ValueError(f"{name}: expected a CPU or CUDA tensor, got a meta tensor")


def _check_config(config: object) -> KVQuantConfig:
    if not isinstance(config, KVQuantConfig):
        what = f"the class {config.__name__}" if isinstance(config, type) else type(config).__name__
        raise TypeError(f"config: expected a KVQuantConfig instance, got {what}")
    return config


# ---- building blocks ------------------------------------------------------------------------

FLOAT8_MAX = 448.0  # largest finite float8_e4m3fn: scales beyond it saturate instead of NaN


@lru_cache(maxsize=64)
def _transform_matrix_cpu(kind: str, n: int) -> Tensor:
    if kind == "none" or n == 0:
        return torch.eye(n, dtype=torch.float32)
    if kind == "hadamard":
        if n & (n - 1):
            raise ValueError(f"key_transform='hadamard' needs a power-of-two size, got {n}")
        matrix = torch.ones(1, 1, dtype=torch.float64)
        while matrix.shape[0] < n:
            matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)])
        return (matrix / math.sqrt(n)).to(torch.float32)
    if kind == "fft":
        spectrum = torch.fft.rfft(torch.eye(n, dtype=torch.float64), norm="ortho")  # [in, freq]
        rows = [spectrum[:, 0].real]
        for k in range(1, (n - 1) // 2 + 1):
            rows += [math.sqrt(2) * spectrum[:, k].real, math.sqrt(2) * spectrum[:, k].imag]
        if n % 2 == 0:
            rows.append(spectrum[:, n // 2].real)
        return torch.stack(rows).to(torch.float32)
    raise ValueError(f"key_transform must be fft, hadamard or none, got {kind!r}")


def transform_matrix(kind: str, n: int, device=None) -> Tensor:
    """The orthonormal float32 matrix M [n, n] of a key transform: y = M x, x = M^T y.

    ``"fft"``: with Y = rfft(x, norm="ortho"), y = [Re Y0, sqrt2 Re Y1, sqrt2 Im Y1, ...,
    Re Y(n/2) when n is even]. ``"hadamard"``: Sylvester's matrix / sqrt(n). ``"none"``: I.
    """
    return _transform_matrix_on(kind, n, torch.device("cpu" if device is None else device))


@lru_cache(maxsize=64)
def _transform_matrix_on(kind: str, n: int, device: torch.device) -> Tensor:
    # One copy per device: packed attention transforms the query of every layer at every step.
    return _transform_matrix_cpu(kind, n).to(device)


def key_channel_split(keys: Tensor, two_bit_channels: int) -> Tensor:
    """int64 [H, D2]: per head, the ascending indices of the D2 channels with the largest range.

    Range = max - min over batch and tokens, in float32; ties go to the lower channel index and
    NaN ranges rank lowest.
    """
    if keys.shape[2] == 0:
        raise ValueError("key_channel_split needs at least one token")
    if keys.shape[0] == 0:  # no sample: every range is equally unknown, ties go to low channels
        return torch.arange(two_bit_channels, device=keys.device).repeat(keys.shape[1], 1)
    x = keys.float()
    spread = x.amax(dim=(0, 2)) - x.amin(dim=(0, 2))  # [H, D]
    spread = torch.nan_to_num(spread, nan=-math.inf)
    order = torch.sort(spread, dim=1, descending=True, stable=True).indices
    return order[:, :two_bit_channels].sort(dim=1).values


def to_scale_dtype(stats: Tensor, scale_dtype: str) -> Tensor:
    """Round float32 statistics to the storage dtype; float8 saturates at +-448."""
    dtype = getattr(torch, scale_dtype)
    if dtype == torch.float8_e4m3fn:
        stats = stats.clamp(-FLOAT8_MAX, FLOAT8_MAX)
    return stats.to(dtype)


def _rows(x: Tensor) -> Tensor:
    batch, heads, tokens, dim = x.shape
    return x.reshape(batch * heads, tokens, dim)


def _heads(rows: Tensor, batch: int, heads: int) -> Tensor:
    return rows.reshape(batch, heads, *rows.shape[1:])


def _dequantize_channel_groups(
    codes: Tensor, stats: Tensor, zero: Tensor | None, mode: str, group: int, dim: int, **kwargs
) -> Tensor:
    """``kv_pack.dequantize_channel_groups`` of ``[B, H, ...]`` codes and statistics as they are
    stored: rows ``B * H``, statistics read as float32."""
    zero = None if zero is None else _rows(zero).float()
    return kv_pack.dequantize_channel_groups(
        _rows(codes), _rows(stats).float(), zero, mode, group, dim, **kwargs
    )


# ---- the scheme, composed over the group kernels of ops.kv_quant_pack ------------------------


def _quantize_keys(keys: Tensor, config: KVQuantConfig, channel_split: Tensor | None) -> PackedKeys:
    channels2, channels1 = check.key_channels(keys, config, channel_split, key_channel_split)
    batch, heads, _, dim = keys.shape
    two_bit = channels2.shape[1]
    implied = two_bit in (0, dim)
    rows, group = _rows(keys), config.group_size
    codes2, scale2, zero2 = _quantize_groups(rows, "minmax2", group, channels2)
    matrix = transform_matrix(config.key_transform, dim - two_bit, keys.device)
    one_bit = torch.gather(rows.float(), 2, _row_index(channels1, rows)) @ matrix.T
    codes1, alpha1, _ = _quantize_groups(one_bit, "sign1", group)
    scale = config.scale_dtype
    return PackedKeys(
        codes2=_heads(codes2, batch, heads),
        scale2=_heads(to_scale_dtype(scale2, scale), batch, heads),
        zero2=_heads(to_scale_dtype(zero2, scale), batch, heads),
        codes1=_heads(codes1, batch, heads),
        alpha1=_heads(to_scale_dtype(alpha1, scale), batch, heads),
        channel_split=None if implied else channels2.to(torch.int16),
        head_dim=dim,
        transform=config.key_transform,
        group_size=group,
        dtype=keys.dtype,
    )


def _dequantize_keys(packed: PackedKeys) -> Tensor:
    batch, heads, tokens, dim = packed.shape
    out = torch.empty(batch * heads, tokens, dim, dtype=packed.dtype, device=packed.codes2.device)
    two_bit = packed.two_bit_channels
    one_bit = dim - two_bit
    group = packed.group_size
    if heads == 0:  # no channel map to index with
        return _heads(out, batch, heads)
    if two_bit:
        _dequantize_channel_groups(
            packed.codes2,
            packed.scale2,
            packed.zero2,
            "minmax2",
            group,
            dim,
            out=out,
            channels=packed.channels2,
        )
    if not one_bit:
        return _heads(out, batch, heads)
    signs = _dequantize_channel_groups(packed.codes1, packed.alpha1, None, "sign1", group, one_bit)
    matrix = transform_matrix(packed.transform, one_bit, out.device)
    restored = (signs @ matrix).to(packed.dtype)
    out.scatter_(2, _row_index(packed.channels1, out), restored)
    return _heads(out, batch, heads)


def _quantize_values(values: Tensor, config: KVQuantConfig, salient: Tensor | None) -> PackedValues:
    check.check_kv_tensor(values, "v")
    if not config.quantizes_values:
        raise ValueError("quantize_values: config.value_bits is 16, so values are not quantized")
    batch, heads, tokens, dim = values.shape
    group, scale = config.group_size, config.scale_dtype
    salient_mask = check.check_salient_mask(salient, batch, tokens, config, values.device)
    regular = values
    if salient_mask is not None:
        regular = _take_tokens(values, _token_index(~salient_mask))
    if config.value_axis == "token":
        mode = "token2"
        codes, stats, zero = kv_pack.quantize_token_groups(_rows(regular), group)
    else:
        mode = "trit" if config.value_bits == 1.58 else "minmax2"
        codes, stats, zero = kv_pack.quantize_channel_groups(_rows(regular), mode, group)
    extra = {}
    if salient_mask is not None:
        salient_index = _token_index(salient_mask)
        s_codes, s_scale, s_zero = kv_pack.quantize_channel_groups(
            _rows(_take_tokens(values, salient_index)), "minmax2", group
        )
        extra = dict(
            salient_index=salient_index,
            salient_codes=_heads(s_codes, batch, heads),
            salient_scale=_heads(to_scale_dtype(s_scale, scale), batch, heads),
            salient_zero=_heads(to_scale_dtype(s_zero, scale), batch, heads),
        )
    return PackedValues(
        mode=mode,
        codes=_heads(codes, batch, heads),
        scale=_heads(to_scale_dtype(stats, scale), batch, heads),
        zero=None if mode == "trit" else _heads(to_scale_dtype(zero, scale), batch, heads),
        group_size=group,
        head_dim=dim,
        dtype=values.dtype,
        **extra,
    )


def _dequantize_values(packed: PackedValues) -> Tensor:
    batch, heads, tokens, dim = packed.shape
    group = packed.group_size
    if packed.mode == "token2":
        regular = kv_pack.dequantize_token_groups(
            _rows(packed.codes),
            _rows(packed.scale).float(),
            _rows(packed.zero).float(),
            group,
            dim,
            dtype=packed.dtype,
        )
    else:
        regular = _dequantize_channel_groups(
            packed.codes, packed.scale, packed.zero, packed.mode, group, dim, dtype=packed.dtype
        )
    regular = _heads(regular, batch, heads)
    if packed.salient_index is None:
        return regular
    salient = _dequantize_channel_groups(
        packed.salient_codes,
        packed.salient_scale,
        packed.salient_zero,
        "minmax2",
        group,
        dim,
        dtype=packed.dtype,
    )
    out = regular.new_empty(batch, heads, tokens, dim)
    out.scatter_(2, _expand_index(packed.regular_index, heads, dim), regular)
    out.scatter_(2, _expand_index(packed.salient_index, heads, dim), _heads(salient, batch, heads))
    return out


def _token_index(mask: Tensor) -> Tensor:
    """int64 [B, n]: the positions of each row's True entries, ascending (equal counts)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order[:, : int(mask[0].sum())]


def _expand_index(index: Tensor, heads: int, dim: int) -> Tensor:
    return index[:, None, :, None].expand(index.shape[0], heads, index.shape[1], dim)


def _take_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, T, D] at per-sample token positions index [B, n] -> [B, H, n, D]."""
    return torch.gather(x, 2, _expand_index(index, x.shape[1], x.shape[3]))


def _quantize_groups(rows: Tensor, mode: str, group: int, channels=None):
    """The primitive, or its empty result when there is no channel to quantize."""
    count = rows.shape[2] if channels is None else channels.shape[1]
    if channels is not None and channels.shape[0] == 0:  # zero heads: nothing to map
        rows, channels = rows[:, :, :count], None
    if count:
        return kv_pack.quantize_channel_groups(rows, mode, group, channels)
    groups = -(-rows.shape[1] // group)
    empty_stats = rows.new_empty(rows.shape[0], groups, 0, dtype=torch.float32)
    codes = rows.new_empty(rows.shape[0], rows.shape[1], 0, dtype=torch.uint8)
    return codes, empty_stats, empty_stats


def _row_index(channels: Tensor, rows: Tensor) -> Tensor:
    """[R, T, C] gather/scatter index: row r uses channels[r % H]."""
    heads = channels.shape[0]
    per_row = channels.repeat(rows.shape[0] // heads, 1) if heads else channels
    return per_row[:, None, :].expand(rows.shape[0], rows.shape[1], channels.shape[1])
