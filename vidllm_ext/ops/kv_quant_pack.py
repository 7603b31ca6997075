"""Bit packing and the group quantizers of the sub-2-bit KV cache, as torch ops backed by the
kv_quant C++/CUDA kernels.

Packed layouts (DESIGN.md, public and bit-exact), along the last dimension of n elements:

============  ==========================================================================
1-bit codes   element i in bit i % 8 of byte i // 8 (``numpy.packbits(bitorder="little")``)
2-bit codes   element i in bits 2 * (i % 4) and 2 * (i % 4) + 1 of byte i // 4
trits         five per byte: byte = sum_j (t_j + 1) * 3**j, t_0 the first; bytes > 242 invalid
============  ==========================================================================

A trailing partial byte is padded with code 0 (trit 0). The quantizers pack each token's codes
along its quantized channels in the same layouts (2-bit for minmax2, 1-bit for sign1, trits for
trit), so a token's codes are one contiguous row of ceil(C / codes per byte) bytes.

Every op is a ``torch.library.custom_op`` in the ``vidllm`` namespace with a fake
implementation; the quantizers are out-mutating ops (``*_out``) the functions below allocate for.
Semantics are those of :mod:`vidllm_ext.reference.kv_quant_pack`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from vidllm_ext.contracts import kv_quant as check
from vidllm_ext.ops._backend import C, dl, rows_contiguous, stream_of, writes_into

# ---- pack / unpack custom ops ----------------------------------------------------------------


def _as_rows(tensor: Tensor) -> Tensor:
    """[rows, n] view (or copy) of [..., n] with a contiguous last dimension."""
    rows = math.prod(tensor.shape[:-1])
    return rows_contiguous(tensor.reshape(rows, tensor.shape[-1]))


def _pack(codes: Tensor, packing: str, per_byte: int) -> tuple[Tensor, int]:
    """(packed [..., bytes], invalid count); reading the count is the one host synchronization."""
    rows = _as_rows(codes)
    packed = torch.empty(
        (rows.shape[0], check.packed_bytes(rows.shape[1], per_byte)),
        dtype=torch.uint8,
        device=codes.device,
    )
    invalid = torch.empty(1, dtype=torch.int64, device=codes.device)
    C.kv_quant_pack(dl(rows), dl(packed), dl(invalid), packing, stream_of(codes))
    return packed.view(*codes.shape[:-1], packed.shape[1]), int(invalid.item())


def _unpack(packed: Tensor, n: int, packing: str, dtype: torch.dtype) -> tuple[Tensor, int]:
    rows = _as_rows(packed)
    codes = torch.empty((rows.shape[0], n), dtype=dtype, device=packed.device)
    invalid = torch.empty(1, dtype=torch.int64, device=packed.device)
    C.kv_quant_unpack(dl(rows), dl(codes), dl(invalid), packing, stream_of(packed))
    return codes.view(*packed.shape[:-1], n), int(invalid.item())


@torch.library.custom_op("vidllm::pack_bits", mutates_args=())
def _pack_bits_op(codes: Tensor, bits: int) -> Tensor:
    packed, invalid = _pack(codes, f"bits{bits}", check.BITS_PER_BYTE[bits])
    if invalid:
        raise check.invalid_codes_error(codes, bits, invalid)
    return packed


@_pack_bits_op.register_fake
def _(codes, bits):
    nb = check.packed_bytes(codes.shape[-1], check.BITS_PER_BYTE[bits])
    return codes.new_empty((*codes.shape[:-1], nb), dtype=torch.uint8)


@torch.library.custom_op("vidllm::unpack_bits", mutates_args=())
def _unpack_bits_op(packed: Tensor, bits: int, n: int) -> Tensor:
    codes, invalid = _unpack(packed, n, f"bits{bits}", torch.uint8)
    if invalid:
        raise check.invalid_bytes_error(packed, n, f"bits{bits}", invalid)
    return codes


@_unpack_bits_op.register_fake
def _(packed, bits, n):
    return packed.new_empty((*packed.shape[:-1], n), dtype=torch.uint8)


@torch.library.custom_op("vidllm::pack_trits", mutates_args=())
def _pack_trits_op(trits: Tensor) -> Tensor:
    packed, invalid = _pack(trits, "trits", check.TRITS_PER_BYTE)
    if invalid:
        raise check.invalid_trits_error(trits, invalid)
    return packed


@_pack_trits_op.register_fake
def _(trits):
    nb = check.packed_bytes(trits.shape[-1], check.TRITS_PER_BYTE)
    return trits.new_empty((*trits.shape[:-1], nb), dtype=torch.uint8)


@torch.library.custom_op("vidllm::unpack_trits", mutates_args=())
def _unpack_trits_op(packed: Tensor, n: int) -> Tensor:
    trits, invalid = _unpack(packed, n, "trits", torch.int8)
    if invalid:
        raise check.invalid_bytes_error(packed, n, "trits", invalid)
    return trits


@_unpack_trits_op.register_fake
def _(packed, n):
    return packed.new_empty((*packed.shape[:-1], n), dtype=torch.int8)


# ---- pack / unpack public API ----------------------------------------------------------------


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Packs 1-bit or 2-bit codes along the last dimension.

    Args:
        codes: uint8 ``[..., n]`` in ``[0, 2**bits)``, any leading dimensions and strides, CPU or
            CUDA.
        bits: 1 (8 codes per byte) or 2 (4 codes per byte), layouts in the module docstring.

    Returns:
        uint8 ``[..., ceil(n * bits / 8)]``, the last byte zero-padded.

    Raises:
        ValueError: a code is ``>= 2**bits`` (the message gives how many and the first). The
            kernel counts invalid codes on the device; reading that count synchronizes the host
            once on CUDA.

    Example:
        >>> vidllm_ext.ops.pack_bits(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2)
        tensor([57,  3], dtype=torch.uint8)
    """
    codes = check.check_code_tensor(codes, "codes", torch.uint8)
    return _pack_bits_op(codes, check.check_bits(bits))


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: uint8 ``[..., n]`` codes from uint8 ``[..., nb]``.

    Args:
        packed: uint8 ``[..., nb]`` with ``nb == ceil(n * bits / 8)`` (else ValueError).
        bits: 1 or 2.
        n: codes per row.

    Raises:
        ValueError: "invalid bytes" when a row's padding bits (past element n) are not zero.
            One host synchronization on CUDA reads the kernel's count.

    Example:
        >>> vidllm_ext.ops.unpack_bits(torch.tensor([57, 3], dtype=torch.uint8), 2, 5)
        tensor([1, 2, 3, 0, 3], dtype=torch.uint8)
    """
    bits = check.check_bits(bits)
    packed, n = check.check_packed(packed, n, check.BITS_PER_BYTE[bits], f"codes of {bits} bits")
    return _unpack_bits_op(packed, bits, n)


def pack_trits(trits: Tensor) -> Tensor:
    """Packs ternary values five per byte: byte = sum_j (t_j + 1) * 3**j.

    Args:
        trits: int8 ``[..., n]`` in {-1, 0, 1}, any leading dimensions and strides.

    Returns:
        uint8 ``[..., ceil(n / 5)]``, a trailing partial group padded with t = 0.

    Raises:
        ValueError: a value outside {-1, 0, 1} (how many, and the first); one host
            synchronization on CUDA.

    Example:
        >>> vidllm_ext.ops.pack_trits(torch.tensor([-1, 0, 1, 1, -1, 1], dtype=torch.int8))
        tensor([ 75, 122], dtype=torch.uint8)
    """
    return _pack_trits_op(check.check_code_tensor(trits, "trits", torch.int8))


def unpack_trits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_trits`: int8 ``[..., n]`` from uint8 ``[..., ceil(n / 5)]``.

    Raises:
        ValueError: "invalid bytes" for a byte above 242 or padding trits that are not 0; one
            host synchronization on CUDA.

    Example:
        >>> vidllm_ext.ops.unpack_trits(torch.tensor([75, 122], dtype=torch.uint8), 6)
        tensor([-1,  0,  1,  1, -1,  1], dtype=torch.int8)
    """
    packed, n = check.check_packed(packed, n, check.TRITS_PER_BYTE, "trits")
    return _unpack_trits_op(packed, n)


# ---- group quantizer custom ops (arguments validated by the functions below) -----------------
# (The mode argument is `quant_mode`: torch's functionalization machinery reserves `mode`.)


@writes_into("quantize_channel_groups_out", ("codes", "scale", "zero"))
def _quantize_channel_groups_op(
    x: Tensor,
    quant_mode: str,
    group_size: int,
    channels: Optional[Tensor],
    codes: Tensor,
    scale: Tensor,
    zero: Tensor,
) -> None:
    zero_arg = dl(zero) if quant_mode == "minmax2" else None
    C.kv_quant_quantize_channel_groups(
        dl(x), dl(channels), dl(codes), dl(scale), zero_arg, quant_mode, group_size, stream_of(x)
    )


@writes_into("dequantize_channel_groups_out", ("out",))
def _dequantize_channel_groups_op(
    codes: Tensor,
    scale: Tensor,
    zero: Optional[Tensor],
    quant_mode: str,
    group_size: int,
    channels: Optional[Tensor],
    out: Tensor,
) -> None:
    C.kv_quant_dequantize_channel_groups(
        dl(codes),
        dl(scale),
        dl(zero),
        dl(channels),
        dl(out),
        quant_mode,
        group_size,
        stream_of(out),
    )


@writes_into("quantize_token_groups_out", ("codes", "scale", "zero"))
def _quantize_token_groups_op(
    x: Tensor, group_size: int, codes: Tensor, scale: Tensor, zero: Tensor
) -> None:
    C.kv_quant_quantize_token_groups(
        dl(x), dl(codes), dl(scale), dl(zero), group_size, stream_of(x)
    )


@writes_into("dequantize_token_groups_out", ("out",))
def _dequantize_token_groups_op(
    codes: Tensor, scale: Tensor, zero: Tensor, group_size: int, out: Tensor
) -> None:
    C.kv_quant_dequantize_token_groups(
        dl(codes), dl(scale), dl(zero), dl(out), group_size, stream_of(out)
    )


# ---- group quantizers: public API ------------------------------------------------------------


def quantize_channel_groups(
    x: Tensor, mode: str, group_size: int, channels: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel quantization in groups of ``group_size`` consecutive tokens.

    Args:
        x: ``[R, T, Cx]`` float32/float16/bfloat16 (R = batch * heads rows), CPU or CUDA, any
            strides (a last dimension with stride != 1 is copied first).
        mode: ``"minmax2"`` (2-bit asymmetric: zero m = min, scale s = (max - m) / 3,
            code = clamp(round_half_even((x - m) / s), 0, 3), 0 where s == 0),
            ``"sign1"`` (1-bit: scale alpha = mean |x|, code = x >= 0) or ``"trit"``
            (ternary: gamma = mean |x|, t = +1 above gamma / 2, -1 below -gamma / 2, else 0).
        group_size: tokens per group; NG = ceil(T / group_size), the last group may be partial.
        channels: optional int64 ``[H, C]``, H dividing R: row r quantizes channels
            ``channels[r % H]`` of x, in that order (without it, all Cx channels). Entries must lie
            in ``[0, Cx)``: checked on the CPU (ValueError); on CUDA checking would synchronize,
            so an out-of-range entry is not read and yields NaN statistics and code 0.

    Returns:
        ``(codes, scale, zero)``: codes uint8 ``[R, T, ceil(C / k)]`` packed per token along the
        quantized channels (k = 4, 8, 5 codes per byte for minmax2, sign1, trit); scale float32
        ``[R, NG, C]``; zero float32 ``[R, NG, C]`` for minmax2, else ``[R, NG, 0]``.

    All math is float32 with IEEE rounding. Means sum ``|x|`` in token order, sequentially, from
    0, then divide by the group's size (CPU and CUDA agree bitwise; torch.mean may differ in the
    last bits). NaN in a group makes its statistics NaN; a code whose computation meets NaN is 0
    (trit: t = 0). No host synchronization; CUDA runs on the current stream.

    Example:
        >>> k = torch.randn(4, 4096, 128, dtype=torch.bfloat16)
        >>> codes, scale, zero = vidllm_ext.ops.quantize_channel_groups(k, "minmax2", 32)
        >>> codes.shape, scale.shape
        (torch.Size([4, 4096, 32]), torch.Size([4, 128, 128]))
    """
    x, mode, group_size, channels, count = check.channel_quantize_args(
        x, mode, group_size, channels
    )
    rows, tokens = x.shape[:2]
    groups = check.ceil_groups(tokens, group_size)
    per_byte = check.MODE_CODES_PER_BYTE[mode]
    device = x.device
    codes = torch.empty(
        (rows, tokens, check.packed_bytes(count, per_byte)), dtype=torch.uint8, device=device
    )
    scale = torch.empty((rows, groups, count), dtype=torch.float32, device=device)
    zero_count = count if mode == "minmax2" else 0
    zero = torch.empty((rows, groups, zero_count), dtype=torch.float32, device=device)
    _quantize_channel_groups_op(
        rows_contiguous(x), mode, group_size, _contiguous(channels), codes, scale, zero
    )
    return codes, scale, zero


def dequantize_channel_groups(
    codes: Tensor,
    scale: Tensor,
    zero: Optional[Tensor],
    mode: str,
    group_size: int,
    n_channels: int,
    *,
    out: Optional[Tensor] = None,
    channels: Optional[Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse of :func:`quantize_channel_groups`.

    Args:
        codes, scale, zero: as returned by :func:`quantize_channel_groups` (statistics float32;
            ``zero`` may be None for sign1 and trit). Codes are trusted; shapes, dtypes and
            devices are checked.
        mode, group_size: as given to the quantizer.
        n_channels: Cx, the channels of the output rows.
        out: optional ``[R, T, n_channels]`` float tensor (any strides) written in place; its
            dtype wins over ``dtype``.
        channels: the quantizer's int64 ``[H, C]`` map; only channels ``channels[r % H]`` of row
            r are written, every other channel of ``out`` is left untouched (a new output is then
            zero-filled). Rows of the map must be distinct and in range: checked on the CPU; on
            CUDA an out-of-range entry is skipped.
        dtype: dtype of a new output (float32, float16 or bfloat16).

    Returns:
        ``out`` (or a new ``[R, T, n_channels]`` tensor): minmax2 ``code * s + m`` (a multiply
        then an add, two roundings), sign1 ``+alpha`` or ``-alpha``, trit ``gamma * t``, each
        rounded to nearest even into the output dtype. No host synchronization.

    Example:
        >>> k_hat = vidllm_ext.ops.dequantize_channel_groups(
        ...     codes, scale, zero, "minmax2", 32, 128, dtype=torch.bfloat16)
    """
    codes, scale, zero, mode, group_size, n_channels, channels, out, dtype = (
        check.channel_dequantize_args(
            codes, scale, zero, mode, group_size, n_channels, out, channels, dtype
        )
    )
    if out is None:
        make = torch.empty if channels is None else torch.zeros
        out = make((*codes.shape[:2], n_channels), dtype=dtype, device=codes.device)
    _dequantize_channel_groups_op(
        codes.contiguous(),
        scale.contiguous(),
        _contiguous(zero),
        mode,
        group_size,
        _contiguous(channels),
        out,
    )
    return out


def quantize_token_groups(x: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """KIVI's token-wise 2-bit quantization: minmax2 over ``group_size`` consecutive channels
    of each token.

    Args:
        x: ``[R, T, C]`` float32/float16/bfloat16, any strides.
        group_size: channels per group; NGc = ceil(C / group_size), the last may be partial.

    Returns:
        ``(codes uint8 [R, T, ceil(C / 4)], scale float32 [R, T, NGc], zero float32
        [R, T, NGc])``, math as minmax2 in :func:`quantize_channel_groups`.

    Example:
        >>> v = torch.randn(4, 4096, 128, dtype=torch.bfloat16)
        >>> codes, scale, zero = vidllm_ext.ops.quantize_token_groups(v, 32)
    """
    x, group_size = check.token_quantize_args(x, group_size)
    rows, tokens, count = x.shape
    groups = check.ceil_groups(count, group_size)
    device = x.device
    codes = torch.empty(
        (rows, tokens, check.packed_bytes(count, 4)), dtype=torch.uint8, device=device
    )
    scale = torch.empty((rows, tokens, groups), dtype=torch.float32, device=device)
    zero = torch.empty_like(scale)
    _quantize_token_groups_op(rows_contiguous(x), group_size, codes, scale, zero)
    return codes, scale, zero


def dequantize_token_groups(
    codes: Tensor,
    scale: Tensor,
    zero: Tensor,
    group_size: int,
    n_channels: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse of :func:`quantize_token_groups`: ``[R, T, n_channels]`` of ``dtype`` with
    ``code * s + m`` (two roundings, no FMA). No host synchronization.

    Example:
        >>> v_hat = vidllm_ext.ops.dequantize_token_groups(codes, scale, zero, 32, 128)
    """
    codes, scale, zero, group_size, n_channels, dtype = check.token_dequantize_args(
        codes, scale, zero, group_size, n_channels, dtype
    )
    out = torch.empty((*codes.shape[:2], n_channels), dtype=dtype, device=codes.device)
    _dequantize_token_groups_op(
        codes.contiguous(), scale.contiguous(), zero.contiguous(), group_size, out
    )
    return out


def _contiguous(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return None if tensor is None else tensor.contiguous()
