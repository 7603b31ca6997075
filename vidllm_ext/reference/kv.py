"""Sub-2-bit KV quantization (VidKV keys and values, KIVI 2-bit) in plain PyTorch: the spec.

The scheme is written once, over four group primitives (quantize / dequantize per channel groups
of tokens and per token groups of channels, see :mod:`vidllm_ext.reference.kv_pack`).
:func:`quantize_keys` and friends here run it on the PyTorch primitives; ``vidllm_ext.ops`` runs
the very same composition on the C++/CUDA kernels, so the two differ only where the kernels do.

Keys ([B, H, T, D]):
- Channel split per KV head: the ``round(D * (key_bits - 1))`` channels with the largest range
  (max - min over batch and tokens; ties: lower channel index; NaN ranges rank lowest) are kept
  at 2 bits: per channel and group of ``group_size`` tokens, min ``m`` and ``s = (max - m) / 3``,
  code = clamp(round_half_even((x - m) / s), 0, 3) (0 where s = 0), x^ = code * s + m with the
  stored (scale_dtype) m and s.
- The other channels, in ascending order, are transformed per token by an orthonormal matrix
  (:func:`transform_matrix`: real DFT, Walsh-Hadamard or identity), and stored as 1 bit: y >= 0,
  with alpha = mean |y| per channel group; y^ = +-alpha and keys are restored by the inverse
  (transposed) transform.

Values: 2-bit as above per channel ("minmax2"), KIVI's per-token groups of channels ("token2"),
or ternary ("trit"): gamma = mean |x| per channel group, t = +1 where x > gamma / 2, -1 where
x < -gamma / 2, else 0, x^ = gamma * t. Salient tokens (VidKV) are stored at 2 bits in channel
groups formed from the salient tokens alone, in order; the rest form their own groups.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import ModuleType

import torch
from torch import Tensor

from vidllm_ext.kv_config import KVQuantConfig
from vidllm_ext.kv_types import PackedKeys, PackedValues, complement_channels
from vidllm_ext.reference import kv_pack as reference_primitives

FLOAT8_MAX = 448.0  # largest finite float8_e4m3fn: scales beyond it saturate instead of NaN


# ---- building blocks ------------------------------------------------------------------------


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


def salient_video_tokens(
    embeds: Tensor, video_mask: Tensor, text_mask: Tensor, ratio: float
) -> Tensor:
    """bool [B, L]: per sample, the top ceil(ratio * n_video) video tokens by salience.

    A video token's salience is the mean dot product of its input embedding with the prompt's
    text-token embeddings (float32); ties go to the earlier token, NaN ranks lowest.
    """
    x = embeds.float()
    text = text_mask.to(x.dtype).unsqueeze(-1)
    text_mean = (x * text).sum(1) / text.sum(1).clamp_min(1.0)  # [B, E]
    score = torch.einsum("ble,be->bl", x, text_mean)
    score = torch.nan_to_num(score, nan=-math.inf).masked_fill(~video_mask, -math.inf)
    chosen = torch.zeros_like(video_mask)
    for row in range(x.shape[0]):  # one top-k per sample, not per token
        count = math.ceil(ratio * int(video_mask[row].sum()))
        if count:
            order = torch.sort(score[row], descending=True, stable=True).indices[:count]
            chosen[row, order] = True
    return chosen


def _rows(x: Tensor) -> Tensor:
    batch, heads, tokens, dim = x.shape
    return x.reshape(batch * heads, tokens, dim)


def _heads(rows: Tensor, batch: int, heads: int) -> Tensor:
    return rows.reshape(batch, heads, *rows.shape[1:])


def _check_kv(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be [B, H, T, D], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")


def _check_split(split: Tensor, heads: int, head_dim: int, two_bit: int, device) -> Tensor:
    if not isinstance(split, Tensor) or split.dtype != torch.int64:
        raise ValueError("channel_split must be an int64 tensor [H, D2]")
    if tuple(split.shape) != (heads, two_bit):
        raise ValueError(
            f"channel_split must be [H, D2] = [{heads}, {two_bit}], got {tuple(split.shape)}"
        )
    if not split.numel():
        return split.to(device)
    ordered = split.to(device).sort(dim=1).values
    # One host read for both checks (the cache validates its split at every flush).
    out_of_range = (ordered[:, 0] < 0) | (ordered[:, -1] >= head_dim)
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any(1)
    problems = torch.stack([out_of_range.any(), repeated.any()]).tolist()
    if problems[0]:
        raise ValueError(f"channel_split indices must be in [0, {head_dim})")
    if problems[1]:
        raise ValueError("channel_split must not repeat a channel within a head")
    return ordered


# ---- the scheme, over a set of primitives ---------------------------------------------------


def quantize_keys_with(
    prims: ModuleType, keys: Tensor, config: KVQuantConfig, channel_split: Tensor | None
) -> PackedKeys:
    _check_kv(keys, "k")
    if not config.quantizes_keys:
        raise ValueError("quantize_keys: config.key_bits is 16, so keys are not quantized")
    batch, heads, _tokens, dim = keys.shape
    config.check_head_dim(dim)
    two_bit = config.two_bit_key_channels(dim)
    if channel_split is None:
        channel_split = key_channel_split(keys, two_bit)
    channels2 = _check_split(channel_split, heads, dim, two_bit, keys.device)
    channels1 = complement_channels(channels2, dim)
    implied = two_bit in (0, dim)
    rows, group = _rows(keys), config.group_size
    codes2, scale2, zero2 = _quantize_groups(prims, rows, "minmax2", group, channels2)
    matrix = transform_matrix(config.key_transform, dim - two_bit, keys.device)
    one_bit = torch.gather(rows.float(), 2, _row_index(channels1, rows)) @ matrix.T
    codes1, alpha1, _ = _quantize_groups(prims, one_bit, "sign1", group)
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


def dequantize_keys_with(prims: ModuleType, packed: PackedKeys) -> Tensor:
    batch, heads, tokens, dim = packed.shape
    out = torch.empty(batch * heads, tokens, dim, dtype=packed.dtype, device=packed.codes2.device)
    two_bit = packed.two_bit_channels
    one_bit = dim - two_bit
    group = packed.group_size
    if heads == 0:  # no channel map to index with
        return _heads(out, batch, heads)
    if two_bit:
        prims.dequantize_channel_groups(
            _rows(packed.codes2),
            _rows(packed.scale2).float(),
            _rows(packed.zero2).float(),
            "minmax2",
            group,
            dim,
            out=out,
            channels=packed.channels2,
        )
    if not one_bit:
        return _heads(out, batch, heads)
    signs = prims.dequantize_channel_groups(
        _rows(packed.codes1), _rows(packed.alpha1).float(), None, "sign1", group, one_bit
    )
    matrix = transform_matrix(packed.transform, one_bit, out.device)
    restored = (signs @ matrix).to(packed.dtype)
    out.scatter_(2, _row_index(packed.channels1, out), restored)
    return _heads(out, batch, heads)


def quantize_values_with(
    prims: ModuleType, values: Tensor, config: KVQuantConfig, salient: Tensor | None
) -> PackedValues:
    _check_kv(values, "v")
    if not config.quantizes_values:
        raise ValueError("quantize_values: config.value_bits is 16, so values are not quantized")
    batch, heads, tokens, dim = values.shape
    group, scale = config.group_size, config.scale_dtype
    salient_mask = _salient_mask(salient, batch, tokens, config, values.device)
    regular = values
    if salient_mask is not None:
        regular = _take_tokens(values, _token_index(~salient_mask))
    if config.value_axis == "token":
        mode = "token2"
        codes, stats, zero = prims.quantize_token_groups(_rows(regular), group)
    else:
        mode = "trit" if config.value_bits == 1.58 else "minmax2"
        codes, stats, zero = prims.quantize_channel_groups(_rows(regular), mode, group)
    extra = {}
    if salient_mask is not None:
        salient_index = _token_index(salient_mask)
        s_codes, s_scale, s_zero = prims.quantize_channel_groups(
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


def dequantize_values_with(prims: ModuleType, packed: PackedValues) -> Tensor:
    batch, heads, tokens, dim = packed.shape
    group = packed.group_size
    zero = None if packed.zero is None else _rows(packed.zero).float()
    codes, scale = _rows(packed.codes), _rows(packed.scale).float()
    if packed.mode == "token2":
        regular = prims.dequantize_token_groups(codes, scale, zero, group, dim, dtype=packed.dtype)
    else:
        regular = prims.dequantize_channel_groups(
            codes, scale, zero, packed.mode, group, dim, dtype=packed.dtype
        )
    regular = _heads(regular, batch, heads)
    if packed.salient_index is None:
        return regular
    salient = prims.dequantize_channel_groups(
        _rows(packed.salient_codes),
        _rows(packed.salient_scale).float(),
        _rows(packed.salient_zero).float(),
        "minmax2",
        group,
        dim,
        dtype=packed.dtype,
    )
    out = regular.new_empty(batch, heads, tokens, dim)
    out.scatter_(2, _expand_index(packed.regular_index, heads, dim), regular)
    out.scatter_(2, _expand_index(packed.salient_index, heads, dim), _heads(salient, batch, heads))
    return out


def _salient_mask(salient, batch: int, tokens: int, config, device) -> Tensor | None:
    """bool [B, T] with the same count in every row, or None when no token is salient."""
    if salient is None:
        return None
    if config.value_bits != 1.58:
        raise ValueError("quantize_values: salient tokens need value_bits=1.58")
    if not isinstance(salient, Tensor) or salient.dtype != torch.bool:
        raise TypeError("salient must be a bool mask [T] or [B, T]")
    if salient.dim() == 1:
        salient = salient.expand(batch, -1)
    if tuple(salient.shape) != (batch, tokens):
        raise ValueError(
            f"salient mask must be [T] or [B, T] = [{batch}, {tokens}], got {tuple(salient.shape)}"
        )
    counts = salient.sum(1)
    if batch and bool((counts != counts[0]).any()):
        raise ValueError(
            "salient: every sample must mark the same number of tokens (the packed values keep "
            f"one layout per batch), got {counts.tolist()}"
        )
    if batch == 0 or int(counts[0]) == 0:
        return None
    return salient.to(device)


def _token_index(mask: Tensor) -> Tensor:
    """int64 [B, n]: the positions of each row's True entries, ascending (equal counts)."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order[:, : int(mask[0].sum())]


def _expand_index(index: Tensor, heads: int, dim: int) -> Tensor:
    return index[:, None, :, None].expand(index.shape[0], heads, index.shape[1], dim)


def _take_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, T, D] at per-sample token positions index [B, n] -> [B, H, n, D]."""
    return torch.gather(x, 2, _expand_index(index, x.shape[1], x.shape[3]))


def _quantize_groups(prims: ModuleType, rows: Tensor, mode: str, group: int, channels=None):
    """The primitive, or its empty result when there is no channel to quantize."""
    count = rows.shape[2] if channels is None else channels.shape[1]
    if channels is not None and channels.shape[0] == 0:  # zero heads: nothing to map
        rows, channels = rows[:, :, :count], None
    if count:
        return prims.quantize_channel_groups(rows, mode, group, channels)
    groups = -(-rows.shape[1] // group)
    empty_stats = rows.new_empty(rows.shape[0], groups, 0, dtype=torch.float32)
    codes = rows.new_empty(rows.shape[0], rows.shape[1], 0, dtype=torch.uint8)
    return codes, empty_stats, empty_stats


def _row_index(channels: Tensor, rows: Tensor) -> Tensor:
    """[R, T, C] gather/scatter index: row r uses channels[r % H]."""
    heads = channels.shape[0]
    per_row = channels.repeat(rows.shape[0] // heads, 1) if heads else channels
    return per_row[:, None, :].expand(rows.shape[0], rows.shape[1], channels.shape[1])


# ---- the reference entry points -------------------------------------------------------------


def quantize_keys(
    k: Tensor, config: KVQuantConfig, channel_split: Tensor | None = None
) -> PackedKeys:
    """Quantize keys [B, H, T, D] (see the module docstring); ``channel_split`` fixes the split."""
    return quantize_keys_with(reference_primitives, k, config, channel_split)


def dequantize_keys(packed: PackedKeys) -> Tensor:
    """[B, H, T, D] in the keys' dtype."""
    return dequantize_keys_with(reference_primitives, packed)


def quantize_values(
    v: Tensor, config: KVQuantConfig, salient: Tensor | None = None
) -> PackedValues:
    """Quantize values [B, H, T, D]; ``salient`` (bool [T] or [B, T], the same count in every
    row) marks tokens stored at 2 bits in channel groups of their own."""
    return quantize_values_with(reference_primitives, v, config, salient)


def dequantize_values(packed: PackedValues) -> Tensor:
    """[B, H, T, D] in the values' dtype, salient tokens back at their positions."""
    return dequantize_values_with(reference_primitives, packed)
