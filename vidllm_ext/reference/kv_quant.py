"""Sub-2-bit KV quantization (VidKV keys and values, KIVI 2-bit): the float64 oracle.

Written from the definition below, end to end, in float64: the channel split, the group
statistics, the codes, the key transform and the reconstruction. It shares nothing with the
ops' composition (``vidllm_ext.ops.kv_quant``) but the argument checks and the packed bit layouts
(:mod:`vidllm_ext.contracts.kv_quant`, the public contract), so comparing the two tests the
composition as well as its kernels. The kernels compute in float32: statistics agree within
float32 rounding, and a code can differ only where its input sits within rounding of a decision
boundary (a half step of a 2-bit code, zero for a sign, gamma / 2 for a trit).

Keys ([B, H, T, D]):
- Channel split per KV head: the ``round(D * (key_bits - 1))`` channels with the largest range
  (max - min over batch and tokens; ties: lower channel index; NaN ranges rank lowest) are kept
  at 2 bits: per channel and group of ``group_size`` tokens (the last group may be partial), min
  ``m`` and ``s = (max - m) / 3``, code = clamp(round_half_even((x - m) / s), 0, 3) (0 where
  s = 0 or the quotient is NaN), x^ = code * s + m with the stored (scale_dtype) m and s.
- The other channels, in ascending order, are transformed per token by an orthonormal matrix
  (:func:`transform_matrix`: real DFT, Walsh-Hadamard or identity), and stored as 1 bit: y >= 0,
  with alpha = mean |y| per channel group; y^ = +-alpha and keys are restored by the inverse
  (transposed) transform.

Values: 2-bit as above per channel ("minmax2"), KIVI's per-token groups of ``group_size``
channels ("token2"), or ternary ("trit"): gamma = mean |x| per channel group, t = +1 where
x > gamma / 2, -1 where x < -gamma / 2, else 0, x^ = gamma * t. Salient tokens (VidKV) are stored
at 2 bits in channel groups formed from the salient tokens alone, in order; the rest form their
own groups.

Statistics are stored in ``scale_dtype`` (float8 saturates at +-448); dequantized tensors come
back in the dtype the input had.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vidllm_ext.contracts import kv_quant as check
from vidllm_ext.contracts.kv_quant import KVQuantConfig, PackedKeys, PackedValues
from vidllm_ext.reference.kv_quant_pack import pack_bits, pack_trits, unpack_bits, unpack_trits

FLOAT8_MAX = 448.0  # largest finite float8_e4m3fn


def transform_matrix(kind: str, n: int) -> Tensor:
    """float64 [n, n], orthonormal, from its formula: y = M x, x = M^T y.

    ``"fft"``: the rows are 1 / sqrt(n) (frequency 0), then for k = 1 .. (n - 1) // 2 the pair
    sqrt(2 / n) cos(2 pi j k / n) and -sqrt(2 / n) sin(2 pi j k / n) (the real and imaginary parts
    of rfft(x, norm="ortho") times sqrt 2), and for even n last (-1)^j / sqrt(n).
    ``"hadamard"``: Sylvester's matrix H[i, j] = (-1)^popcount(i & j), divided by sqrt(n).
    ``"none"``: the identity.
    """
    j = torch.arange(n, dtype=torch.float64)
    if kind == "none" or n == 0:
        return torch.eye(n, dtype=torch.float64)
    if kind == "hadamard":
        if n & (n - 1):
            raise ValueError(f"key_transform='hadamard' needs a power-of-two size, got {n}")
        both = torch.arange(n)[:, None] & torch.arange(n)[None, :]
        parity = sum((both >> bit) & 1 for bit in range(n.bit_length())) % 2
        return (1 - 2 * parity).double() / math.sqrt(n)
    if kind == "fft":
        rows = [torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64)]
        for k in range(1, (n - 1) // 2 + 1):
            angle = 2 * math.pi * j * k / n
            rows += [math.sqrt(2 / n) * torch.cos(angle), -math.sqrt(2 / n) * torch.sin(angle)]
        if n % 2 == 0:
            rows.append((1 - 2 * (j % 2)) / math.sqrt(n))
        return torch.stack(rows)
    raise ValueError(f"key_transform must be fft, hadamard or none, got {kind!r}")


def key_channel_split(keys: Tensor, two_bit_channels: int) -> Tensor:
    """int64 [H, D2]: per head, the ascending indices of the D2 channels with the largest range
    (max - min over batch and tokens; ties to the lower index, NaN ranges lowest)."""
    batch, heads, tokens, dim = keys.shape
    if tokens == 0:
        raise ValueError("key_channel_split needs at least one token")
    if batch:
        x = keys.double()
        spread = (x.amax(dim=(0, 2)) - x.amin(dim=(0, 2))).nan_to_num(nan=-math.inf).tolist()
    else:  # no sample: every range is equally unknown
        spread = [[-math.inf] * dim for _ in range(heads)]
    split = []
    for ranges in spread:
        order = sorted(range(dim), key=lambda c: (-ranges[c], c))
        split.append(sorted(order[:two_bit_channels]))
    return torch.tensor(split, dtype=torch.int64, device=keys.device).view(heads, two_bit_channels)


def quantize_keys(
    k: Tensor, config: KVQuantConfig, channel_split: Tensor | None = None
) -> PackedKeys:
    """Quantize keys [B, H, T, D] (see the module docstring); ``channel_split`` fixes the split."""
    channels2, channels1 = check.key_channels(k, config, channel_split, key_channel_split)
    dim, two_bit = k.shape[3], channels2.shape[1]
    x, group = k.double(), config.group_size
    codes2, scale2, zero2 = _minmax_over_tokens(_channels(x, channels2), group)
    transform = transform_matrix(config.key_transform, dim - two_bit).to(k.device)
    y = _channels(x, channels1) @ transform.T
    alpha1 = _mean_abs_over_tokens(y, group)
    signs = (y >= 0).to(torch.uint8)
    stored = config.scale_dtype
    return PackedKeys(
        codes2=pack_bits(codes2, 2),
        scale2=_stored(scale2, stored),
        zero2=_stored(zero2, stored),
        codes1=pack_bits(signs, 1),
        alpha1=_stored(alpha1, stored),
        channel_split=None if two_bit in (0, dim) else channels2.to(torch.int16),
        head_dim=dim,
        transform=config.key_transform,
        group_size=group,
        dtype=k.dtype,
    )


def dequantize_keys(packed: PackedKeys) -> Tensor:
    """[B, H, T, D] in the keys' dtype: :func:`exact_keys` rounded once."""
    return exact_keys(packed).to(packed.dtype)


def exact_keys(packed: PackedKeys) -> Tensor:
    """float64 [B, H, T, D]: code * s + m and M^T (+-alpha), from the stored statistics."""
    batch, heads, tokens, dim = packed.shape
    two_bit, group = packed.two_bit_channels, packed.group_size
    out = torch.zeros(batch, heads, tokens, dim, dtype=torch.float64, device=packed.codes2.device)
    if heads == 0:
        return out
    if two_bit:
        codes2 = unpack_bits(packed.codes2, 2, two_bit).double()
        two = codes2 * _per_token(packed.scale2, group, tokens)
        _set_channels(out, packed.channels2, two + _per_token(packed.zero2, group, tokens))
    one_bit = dim - two_bit
    if one_bit:
        signs = unpack_bits(packed.codes1, 1, one_bit).double() * 2 - 1
        y = signs * _per_token(packed.alpha1, group, tokens)
        transform = transform_matrix(packed.transform, one_bit).to(out.device)
        _set_channels(out, packed.channels1, y @ transform)
    return out


def quantize_values(
    v: Tensor, config: KVQuantConfig, salient: Tensor | None = None
) -> PackedValues:
    """Quantize values [B, H, T, D]; ``salient`` (bool [T] or [B, T], the same count in every
    row) marks tokens stored at 2 bits in channel groups of their own."""
    check.check_kv_tensor(v, "v")
    if not config.quantizes_values:
        raise ValueError("quantize_values: config.value_bits is 16, so values are not quantized")
    batch, _, tokens, dim = v.shape
    salient_mask = check.check_salient_mask(salient, batch, tokens, config, v.device)
    x, group, stored = v.double(), config.group_size, config.scale_dtype
    extra = {}
    if salient_mask is not None:
        salient_index = _positions(salient_mask)
        codes, scale, zero = _minmax_over_tokens(_tokens(x, salient_index), group)
        extra = dict(
            salient_index=salient_index,
            salient_codes=pack_bits(codes, 2),
            salient_scale=_stored(scale, stored),
            salient_zero=_stored(zero, stored),
        )
        x = _tokens(x, _positions(~salient_mask))
    if config.value_axis == "token":
        mode = "token2"
        codes, scale, zero = _minmax_over_channels(x, group)
        codes = pack_bits(codes, 2)
    elif config.value_bits == 1.58:
        mode = "trit"
        scale, zero = _mean_abs_over_tokens(x, group), None
        half = _per_token(scale, group, x.shape[2]) / 2
        trits = (x > half).to(torch.int8) - (x < -half).to(torch.int8)
        codes = pack_trits(trits)
    else:
        mode = "minmax2"
        codes, scale, zero = _minmax_over_tokens(x, group)
        codes = pack_bits(codes, 2)
    return PackedValues(
        mode=mode,
        codes=codes,
        scale=_stored(scale, stored),
        zero=None if zero is None else _stored(zero, stored),
        group_size=group,
        head_dim=dim,
        dtype=v.dtype,
        **extra,
    )


def dequantize_values(packed: PackedValues) -> Tensor:
    """[B, H, T, D] in the values' dtype: :func:`exact_values` rounded once."""
    return exact_values(packed).to(packed.dtype)


def exact_values(packed: PackedValues) -> Tensor:
    """float64 [B, H, T, D] values from the stored statistics, salient tokens back in place."""
    batch, heads, tokens, dim = packed.shape
    group, regular_tokens = packed.group_size, packed.codes.shape[2]
    if packed.mode == "token2":
        codes = unpack_bits(packed.codes, 2, dim).double()
        regular = codes * _per_channel(packed.scale, group, dim)
        regular = regular + _per_channel(packed.zero, group, dim)
    elif packed.mode == "trit":
        trits = unpack_trits(packed.codes, dim).double()
        regular = trits * _per_token(packed.scale, group, regular_tokens)
    else:
        regular = _minmax_decode(packed.codes, packed.scale, packed.zero, group, dim)
    if packed.salient_index is None:
        return regular
    out = regular.new_zeros(batch, heads, tokens, dim)
    salient = _minmax_decode(
        packed.salient_codes, packed.salient_scale, packed.salient_zero, group, dim
    )
    for row in range(batch):
        out[row][:, packed.regular_index[row]] = regular[row]
        out[row][:, packed.salient_index[row]] = salient[row]
    return out


# ---- the definitions, one group at a time ----------------------------------------------------


def _token_groups(count: int, group: int) -> list[slice]:
    """Consecutive groups of ``group`` items covering ``count`` (the last may be partial)."""
    return [slice(start, min(start + group, count)) for start in range(0, count, group)]


def _minmax_codes(x: Tensor, low: Tensor, step: Tensor) -> Tensor:
    level = torch.round((x - low) / step)  # round half to even
    usable = (step != 0) & ~level.isnan()
    return torch.where(usable, level.clamp(0, 3), 0).to(torch.uint8)


def _minmax(x: Tensor, group: int, axis: int) -> tuple[Tensor, Tensor, Tensor]:
    """x [B, H, T, C] -> (codes uint8 like x, s and m per group of ``group`` along ``axis``):
    axis 2, per channel and token group ([B, H, NG, C]); axis 3, per token and channel group
    (KIVI's token2, [B, H, T, NGc])."""
    codes = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    scales, zeros = [], []
    for part in _token_groups(x.shape[axis], group):
        index = (slice(None),) * axis + (part,)
        values = x[index]
        low, high = values.amin(axis, keepdim=True), values.amax(axis, keepdim=True)
        step = (high - low) / 3
        codes[index] = _minmax_codes(values, low, step)
        scales.append(step)
        zeros.append(low)
    if not scales:
        empty = x.new_zeros(*x.shape[:axis], 0, *x.shape[axis + 1 :])
        return codes, empty, empty
    return codes, torch.cat(scales, axis), torch.cat(zeros, axis)


def _minmax_over_tokens(x: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    return _minmax(x, group, axis=2)


def _minmax_over_channels(x: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    return _minmax(x, group, axis=3)


def _mean_abs_over_tokens(x: Tensor, group: int) -> Tensor:
    """[B, H, NG, C]: mean |x| per channel and token group."""
    means = [x[:, :, part].abs().mean(2, keepdim=True) for part in _token_groups(x.shape[2], group)]
    return torch.cat(means, 2) if means else x.new_zeros(*x.shape[:2], 0, x.shape[3])


def _minmax_decode(codes: Tensor, scale: Tensor, zero: Tensor, group: int, dim: int) -> Tensor:
    tokens = codes.shape[2]
    levels = unpack_bits(codes, 2, dim).double()
    return levels * _per_token(scale, group, tokens) + _per_token(zero, group, tokens)


def _per_token(stats: Tensor, group: int, tokens: int) -> Tensor:
    """float64 [B, H, T, C] from the stored per-group [B, H, NG, C]."""
    return stats.double().repeat_interleave(group, dim=2)[:, :, :tokens]


def _per_channel(stats: Tensor, group: int, channels: int) -> Tensor:
    """float64 [B, H, T, C] from the stored per-channel-group [B, H, T, NGc]."""
    return stats.double().repeat_interleave(group, dim=3)[..., :channels]


def _stored(stats: Tensor, scale_dtype: str) -> Tensor:
    dtype = getattr(torch, scale_dtype)
    if dtype == torch.float8_e4m3fn:
        stats = stats.clamp(-FLOAT8_MAX, FLOAT8_MAX)
    return stats.to(dtype)


def _channels(x: Tensor, channels: Tensor) -> Tensor:
    """x [B, H, T, D] at the per-head channels [H, C] -> [B, H, T, C]."""
    batch, heads, tokens, _ = x.shape
    index = channels[None, :, None, :].expand(batch, heads, tokens, channels.shape[1])
    return torch.gather(x, 3, index)


def _set_channels(out: Tensor, channels: Tensor, values: Tensor) -> None:
    batch, heads, tokens, _ = out.shape
    index = channels[None, :, None, :].expand(batch, heads, tokens, channels.shape[1])
    out.scatter_(3, index, values)


def _positions(mask: Tensor) -> Tensor:
    """int64 [B, n]: the ascending positions of each row's True entries (equal counts)."""
    rows = [row.nonzero().flatten() for row in mask]
    return torch.stack(rows) if rows else mask.new_zeros(0, 0, dtype=torch.int64)


def _tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, T, D] at per-sample token positions index [B, n] -> [B, H, n, D]."""
    return torch.stack([x[row][:, index[row]] for row in range(x.shape[0])]) if len(x) else x
