"""Argument checks shared by the KV packing/quantization ops and their reference, so both raise
the same exceptions.

Everything here reads only shapes, dtypes, devices and Python values (so it also runs on fake
tensors while ``torch.compile`` traces), except :func:`check_channel_values`, which reads the
channel map itself (the reference calls it; the C++ binding does the same for CPU tensors).
"""

from __future__ import annotations

import torch

from vidllm_ext._validation import check_choice, check_float_dtype, check_tensor

BITS = (1, 2)
MODES = ("minmax2", "sign1", "trit")
# Codes per packed byte of each layout, and of the layout each quantization mode stores.
BITS_PER_BYTE = {1: 8, 2: 4}
TRITS_PER_BYTE = 5
MODE_CODES_PER_BYTE = {"minmax2": 4, "sign1": 8, "trit": 5}


def packed_bytes(n: int, per_byte: int) -> int:
    """Bytes holding n codes: ceil(n / per_byte)."""
    return -(-n // per_byte)


def ceil_groups(count: int, group_size: int) -> int:
    """Groups of group_size covering count items, the last one possibly partial."""
    return -(-count // group_size)


MAX_GROUP_SIZE = 2**31 - 1


def check_int(value: object, name: str, minimum: int, maximum: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a Python int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}: expected an integer in [{minimum}, {maximum}], got {value}")
    return value


def check_group_size(group_size: object) -> int:
    return check_int(group_size, "group_size", 1, MAX_GROUP_SIZE)


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits: expected a Python int, got {type(bits).__name__}")
    if bits not in BITS:
        raise ValueError(f"bits: expected 1 or 2, got {bits}")
    return bits


def check_code_tensor(codes: object, name: str, dtype: torch.dtype) -> torch.Tensor:
    """codes: a tensor of dtype with at least one dimension (the packed one, last)."""
    codes = check_tensor(codes, name)
    if codes.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {codes.dtype}")
    if codes.dim() < 1:
        raise ValueError(f"{name}: expected at least one dimension [..., n], got a 0-D tensor")
    return codes


def check_packed(packed: object, n: object, per_byte: int, what: str) -> tuple[torch.Tensor, int]:
    """packed: uint8 [..., ceil(n / per_byte)]; returns it and n."""
    packed = check_code_tensor(packed, "packed", torch.uint8)
    n = check_int(n, "n", 0)
    expected = packed_bytes(n, per_byte)
    if packed.shape[-1] != expected:
        raise ValueError(
            f"packed: expected {expected} bytes in the last dimension for n={n} {what}, "
            f"got shape {list(packed.shape)}"
        )
    return packed, n


def check_x(x: object) -> torch.Tensor:
    """x: float32/float16/bfloat16 [R, T, C]."""
    x = check_tensor(x, "x")
    if x.dim() != 3:
        raise ValueError(f"x: expected a 3-D tensor [rows, tokens, channels], got {list(x.shape)}")
    check_float_dtype(x, "x")
    return x


def check_mode(mode: object) -> str:
    return check_choice(mode, MODES, "mode")


def check_channels(channels: object, rows: int, device: torch.device) -> torch.Tensor | None:
    """channels: None, or int64 [H, C] on device with H dividing rows (values unchecked)."""
    if channels is None:
        return None
    channels = check_tensor(channels, "channels")
    if channels.dtype != torch.int64:
        raise TypeError(f"channels: expected dtype torch.int64, got {channels.dtype}")
    if channels.dim() != 2:
        raise ValueError(f"channels: expected a 2-D tensor [heads, C], got {list(channels.shape)}")
    heads = channels.shape[0]
    if heads < 1 or rows % heads != 0:
        raise ValueError(
            f"channels: expected a number of heads (dimension 0) that divides the {rows} rows, "
            f"got shape {list(channels.shape)}"
        )
    check_device(channels, "channels", device)
    return channels


def check_channel_values(
    channels: torch.Tensor, limit: int, limit_name: str, require_distinct: bool
) -> None:
    """Every entry in [0, limit); with require_distinct, no row listing a channel twice."""
    bad = (channels < 0) | (channels >= limit)
    if bool(bad.any()):
        h, c = bad.nonzero()[0].tolist()
        raise ValueError(
            f"channels: expected indices in [0, {limit}) ({limit_name}), "
            f"got {int(channels[h, c])} at [{h}, {c}]"
        )
    if require_distinct and channels.shape[1] > 1:
        ordered = channels.sort(dim=1).values
        repeated = ordered[:, 1:] == ordered[:, :-1]
        if bool(repeated.any()):
            h, c = repeated.nonzero()[0].tolist()
            raise ValueError(
                f"channels: expected distinct channels in each row, got {int(ordered[h, c])} "
                f"twice in row {h}"
            )


def check_device(tensor: torch.Tensor, name: str, device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {tensor.device}")


def check_stats(
    stats: object, name: str, shape: tuple[int, int, int], device: torch.device
) -> torch.Tensor:
    """scale or zero: float32 of exactly shape, on device."""
    stats = check_tensor(stats, name)
    if stats.dtype != torch.float32:
        raise TypeError(
            f"{name}: expected dtype torch.float32 (cast stored statistics with .float()), "
            f"got {stats.dtype}"
        )
    if tuple(stats.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(stats.shape)}")
    check_device(stats, name, device)
    return stats


def check_group_codes(codes: object, bytes_per_token: int, what: str) -> torch.Tensor:
    """codes: uint8 [R, T, bytes_per_token]."""
    codes = check_code_tensor(codes, "codes", torch.uint8)
    if codes.dim() != 3 or codes.shape[2] != bytes_per_token:
        raise ValueError(
            f"codes: expected a 3-D tensor [rows, tokens, {bytes_per_token}] ({what}), "
            f"got {list(codes.shape)}"
        )
    return codes


def check_out(out: torch.Tensor, shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    out = check_tensor(out, "out")
    check_float_dtype(out, "out")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out: expected shape {list(shape)}, got {list(out.shape)}")
    check_device(out, "out", device)
    return out


def check_dtype(dtype: object) -> torch.dtype:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype}"
        )
    return dtype


# ---- argument sets of the group quantizers --------------------------------------------------


def channel_quantize_args(x: object, mode: object, group_size: object, channels: object):
    """(x, mode, group_size, channels, C) for quantize_channel_groups."""
    x = check_x(x)
    mode = check_mode(mode)
    group_size = check_group_size(group_size)
    channels = check_channels(channels, x.shape[0], x.device)
    count = x.shape[2] if channels is None else channels.shape[1]
    return x, mode, group_size, channels, count


def channel_dequantize_args(
    codes: object,
    scale: object,
    zero: object,
    mode: object,
    group_size: object,
    n_channels: object,
    out: object,
    channels: object,
    dtype: object,
):
    """(codes, scale, zero or None, mode, group_size, channels, out or None, dtype) for
    dequantize_channel_groups; zero is None for modes without zero points."""
    mode = check_mode(mode)
    group_size = check_group_size(group_size)
    n_channels = check_int(n_channels, "n_channels", 0)
    dtype = check_dtype(dtype)
    scale = check_tensor(scale, "scale")
    if scale.dim() != 3:
        raise ValueError(f"scale: expected a 3-D tensor [rows, groups, C], got {list(scale.shape)}")
    count = scale.shape[2]
    codes = check_group_codes(
        codes, packed_bytes(count, MODE_CODES_PER_BYTE[mode]), f"{count} channels in mode {mode!r}"
    )
    rows, tokens = codes.shape[:2]
    device = codes.device
    stats_shape = (rows, ceil_groups(tokens, group_size), count)
    scale = check_stats(scale, "scale", stats_shape, device)
    if mode == "minmax2":
        zero = check_stats(zero, "zero", stats_shape, device)
    elif zero is not None:
        zero = check_stats(zero, "zero", (*stats_shape[:2], 0), device)
        zero = None
    channels = check_channels(channels, rows, device)
    if channels is not None and channels.shape[1] != count:
        raise ValueError(
            f"channels: expected {count} columns (the C of scale), got {list(channels.shape)}"
        )
    if channels is None and count != n_channels:
        raise ValueError(
            f"n_channels: expected {count} (the C of scale) without a channel map, got {n_channels}"
        )
    if out is not None:
        out = check_out(out, (rows, tokens, n_channels), device)
    return codes, scale, zero, mode, group_size, n_channels, channels, out, dtype


def token_quantize_args(x: object, group_size: object):
    return check_x(x), check_group_size(group_size)


def token_dequantize_args(
    codes: object, scale: object, zero: object, group_size: object, n_channels: object, dtype
):
    """(codes, scale, zero, group_size, n_channels, dtype) for dequantize_token_groups."""
    group_size = check_group_size(group_size)
    n_channels = check_int(n_channels, "n_channels", 0)
    dtype = check_dtype(dtype)
    codes = check_group_codes(codes, packed_bytes(n_channels, 4), f"{n_channels} 2-bit channels")
    rows, tokens = codes.shape[:2]
    stats_shape = (rows, tokens, ceil_groups(n_channels, group_size))
    scale = check_stats(scale, "scale", stats_shape, codes.device)
    zero = check_stats(zero, "zero", stats_shape, codes.device)
    return codes, scale, zero, group_size, n_channels, dtype
