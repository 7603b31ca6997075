"""Bit packing and group quantizers of the sub-2-bit KV cache in vectorized PyTorch: the spec the
kv_quant kernels match.

Packed layouts (DESIGN.md), along the last dimension, n elements per row:

- 1-bit: element i in bit i % 8 of byte i // 8 (``numpy.packbits(..., bitorder="little")``);
- 2-bit: element i in bits 2 * (i % 4) and 2 * (i % 4) + 1 of byte i // 4;
- trits: five per byte, byte = sum_j (t_j + 1) * 3**j with t_0 the first; bytes above 242 are
  invalid.

Every layout is a base-radix number per byte (radix 2, 4, 3), first element least significant,
of digits = code (bits) or trit + 1; a trailing partial byte is padded with the digit of code 0.

Quantizers work on x [R, T, C] (R = batch * heads rows). Channel groups are group_size
consecutive tokens of one channel; token groups are group_size consecutive channels of one
token; a last group may be partial. Statistics are float32: minmax2 (2-bit) zero m = min,
scale s = (max - m) / 3, code = round_half_even((x - m) / s) clamped to [0, 3] (0 where s == 0 or
NaN); sign1 (1-bit) alpha = mean |x|, code = x >= 0; trit gamma = mean |x|, t = +1 where
x > gamma / 2, -1 where x < -gamma / 2, else 0. NaN propagates into a group's statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidllm_ext.contracts import kv_quant as check
from vidllm_ext.contracts.kv_quant import (
    BITS1_LAYOUT,
    BITS2_LAYOUT,
    MODE_LAYOUT,
    TRITS_LAYOUT,
    invalid_bytes,
    invalid_bytes_error,
    invalid_codes_error,
    invalid_trits_error,
    unpack_digits,
)


def _pack_digits(digits: torch.Tensor, layout: tuple[int, int, int]) -> torch.Tensor:
    """uint8 [..., ceil(n / per_byte)] from int64 digits [..., n] in [0, radix)."""
    radix, per_byte, pad_digit = layout
    n = digits.shape[-1]
    groups = check.packed_bytes(n, per_byte)
    padded = F.pad(digits, (0, groups * per_byte - n), value=pad_digit)
    weights = radix ** torch.arange(per_byte, device=digits.device)
    grouped = padded.reshape(*digits.shape[:-1], groups, per_byte)
    return (grouped * weights).sum(-1).to(torch.uint8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 [..., ceil(n * bits / 8)] from uint8 codes [..., n] in [0, 2**bits)."""
    codes = check.check_code_tensor(codes, "codes", torch.uint8)
    bits = check.check_bits(bits)
    if bool((codes >= 2**bits).any()):
        raise invalid_codes_error(codes, bits)
    return _pack_digits(codes.long(), BITS1_LAYOUT if bits == 1 else BITS2_LAYOUT)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """uint8 codes [..., n] from packed uint8 [..., ceil(n * bits / 8)]; non-zero padding bits
    raise ValueError."""
    bits = check.check_bits(bits)
    packed, n = check.check_packed(packed, n, check.BITS_PER_BYTE[bits], f"codes of {bits} bits")
    layout = BITS1_LAYOUT if bits == 1 else BITS2_LAYOUT
    if bool(invalid_bytes(packed, n, layout).any()):
        raise invalid_bytes_error(packed, n, f"bits{bits}")
    return unpack_digits(packed, layout)[..., :n].to(torch.uint8)


def pack_trits(trits: torch.Tensor) -> torch.Tensor:
    """uint8 [..., ceil(n / 5)] from int8 trits [..., n] in {-1, 0, 1}."""
    trits = check.check_code_tensor(trits, "trits", torch.int8)
    if bool(((trits < -1) | (trits > 1)).any()):
        raise invalid_trits_error(trits)
    return _pack_digits(trits.long() + 1, TRITS_LAYOUT)


def unpack_trits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """int8 trits [..., n] from packed uint8 [..., ceil(n / 5)]; bytes above 242 and padding
    trits other than 0 raise ValueError."""
    packed, n = check.check_packed(packed, n, check.TRITS_PER_BYTE, "trits")
    if bool(invalid_bytes(packed, n, TRITS_LAYOUT).any()):
        raise invalid_bytes_error(packed, n, "trits")
    return (unpack_digits(packed, TRITS_LAYOUT)[..., :n] - 1).to(torch.int8)


# ---- quantizers ----------------------------------------------------------------------------


def _select_channels(x: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
    """float32 [R, T, C]: row r keeps channels[r % H] of x [R, T, Cx] (all without a map)."""
    if channels is None:
        return x.float()
    rows, tokens = x.shape[:2]
    index = channels.repeat(rows // channels.shape[0], 1)  # [R, C]
    return x.float().gather(2, index[:, None, :].expand(rows, tokens, channels.shape[1]))


def _token_groups(values: torch.Tensor, group_size: int, fill: float) -> torch.Tensor:
    """[R, NG, group_size, C] from [R, T, C], the last group padded with fill."""
    rows, tokens, count = values.shape
    groups = check.ceil_groups(tokens, group_size)
    padded = F.pad(values, (0, 0, 0, groups * group_size - tokens), value=fill)
    return padded.view(rows, groups, group_size, count)


def _minmax_stats(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (high - low) / 3, low


def _encode(x: torch.Tensor, mode: str, scale: torch.Tensor, zero: torch.Tensor | None):
    """int64 digits of x given per-element statistics (minmax2 code, sign1 bit, trit + 1)."""
    if mode == "minmax2":
        level = torch.round((x - zero) / scale)
        keep = (scale != 0) & ~level.isnan()
        return torch.where(keep, level.clamp(0, 3), 0).long()
    if mode == "sign1":
        return (x >= 0).long()
    half = scale / 2
    return 1 + (x > half).long() - (x < -half).long()


def _decode(digits: torch.Tensor, mode: str, scale: torch.Tensor, zero: torch.Tensor | None):
    if mode == "minmax2":
        return digits.float() * scale + zero
    if mode == "sign1":
        return torch.where(digits == 1, scale, -scale)
    return scale * (digits - 1).float()


def _per_token(stats: torch.Tensor, group_size: int, tokens: int) -> torch.Tensor:
    """[R, T, C] from per-group [R, NG, C]."""
    return stats.repeat_interleave(group_size, dim=1)[:, :tokens]


def channel_group_codes(
    x: torch.Tensor,
    mode: str,
    group_size: int,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    channels: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 codes [R, T, bytes] of x under given statistics: the decision half of
    quantize_channel_groups, so tests can check a kernel's codes against its own statistics."""
    values = _select_channels(x, channels)
    tokens = values.shape[1]
    per_token_zero = None if mode != "minmax2" else _per_token(zero, group_size, tokens)
    digits = _encode(values, mode, _per_token(scale, group_size, tokens), per_token_zero)
    return _pack_digits(digits, MODE_LAYOUT[mode])


def quantize_channel_groups(
    x: torch.Tensor, mode: str, group_size: int, channels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel quantization in groups of group_size tokens.

    x [R, T, Cx] float; channels optional int64 [H, C] (row r quantizes channels[r % H]).
    Returns (codes uint8 [R, T, bytes(C)], scale f32 [R, NG, C], zero f32 [R, NG, C] for
    minmax2, else [R, NG, 0]). Means are a float32 sum over the group divided by its size.
    """
    x, mode, group_size, channels, _ = check.channel_quantize_args(x, mode, group_size, channels)
    if channels is not None:
        check.check_channel_values(channels, x.shape[2], "the channels of x", False)
    values = _select_channels(x, channels)
    rows, tokens = values.shape[:2]
    if mode == "minmax2":
        low = _token_groups(values, group_size, float("inf")).amin(2)
        high = _token_groups(values, group_size, float("-inf")).amax(2)
        scale, zero = _minmax_stats(low, high)
    else:
        sums = _token_groups(values.abs(), group_size, 0.0).sum(2)
        starts = torch.arange(sums.shape[1], device=x.device) * group_size
        sizes = (tokens - starts).clamp(max=group_size).float()
        scale = sums / sizes[:, None]
        zero = values.new_empty((rows, sums.shape[1], 0))
    codes = channel_group_codes(x, mode, group_size, scale, zero, channels)
    return codes, scale, zero


def dequantize_channel_groups(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    mode: str,
    group_size: int,
    n_channels: int,
    *,
    out: torch.Tensor | None = None,
    channels: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x^ [R, T, n_channels] from quantize_channel_groups' outputs: minmax2 code * s + m,
    sign1 +-alpha, trit gamma * t, rounded to out's dtype (else ``dtype``). With channels, only
    channels[r % H] of row r are written (into out, or into zeros)."""
    codes, scale, zero, mode, group_size, n_channels, channels, out, dtype = (
        check.channel_dequantize_args(
            codes, scale, zero, mode, group_size, n_channels, out, channels, dtype
        )
    )
    rows, tokens = codes.shape[:2]
    count = scale.shape[2]
    if channels is not None:
        check.check_channel_values(channels, n_channels, "the channels of out", True)
    digits = unpack_digits(codes, MODE_LAYOUT[mode])[..., :count]
    per_token_zero = None if zero is None else _per_token(zero, group_size, tokens)
    values = _decode(digits, mode, _per_token(scale, group_size, tokens), per_token_zero)
    if out is None:
        make = torch.empty if channels is None else torch.zeros
        out = make((rows, tokens, n_channels), dtype=dtype, device=codes.device)
    if channels is None:
        return out.copy_(values)
    index = channels.repeat(rows // channels.shape[0], 1)[:, None, :].expand(rows, tokens, count)
    return out.scatter_(2, index, values.to(out.dtype))


def quantize_token_groups(
    x: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KIVI's token-wise 2-bit quantization: minmax2 over group_size consecutive channels of each
    token. x [R, T, C] -> (codes uint8 [R, T, ceil(C / 4)], scale, zero f32 [R, T, NGc])."""
    x, group_size = check.token_quantize_args(x, group_size)
    values = x.float()
    count = values.shape[2]
    groups = check.ceil_groups(count, group_size)

    def grouped(fill: float) -> torch.Tensor:
        padded = F.pad(values, (0, groups * group_size - count), value=fill)
        return padded.unflatten(-1, (groups, group_size))

    scale, zero = _minmax_stats(grouped(float("inf")).amin(-1), grouped(float("-inf")).amax(-1))
    per_channel = [s.repeat_interleave(group_size, dim=-1)[..., :count] for s in (scale, zero)]
    digits = _encode(values, "minmax2", *per_channel)
    return _pack_digits(digits, BITS2_LAYOUT), scale, zero


def dequantize_token_groups(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    n_channels: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x^ [R, T, n_channels] = code * s + m of quantize_token_groups' outputs, in ``dtype``."""
    codes, scale, zero, group_size, n_channels, dtype = check.token_dequantize_args(
        codes, scale, zero, group_size, n_channels, dtype
    )
    digits = unpack_digits(codes, BITS2_LAYOUT)[..., :n_channels]
    per_channel = [s.repeat_interleave(group_size, dim=-1)[..., :n_channels] for s in (scale, zero)]
    return _decode(digits, "minmax2", *per_channel).to(dtype)
