"""The sub-2-bit KV cache's contract: configuration, packed types and the argument checks of the
packing and quantization ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

from vidllm_ext.contracts.checks import (
    check_choice,
    check_device,
    check_float_dtype,
    check_float_tensor,
    check_int,
    check_shape,
    check_tensor,
)

# ---- configuration
KEY_TRANSFORMS = ("fft", "hadamard", "none")
VALUE_AXES = ("channel", "token")
SCALE_DTYPES = ("float16", "bfloat16", "float8_e4m3fn")
FULL_PRECISION_BITS = 16


@dataclass(frozen=True)
class KVQuantConfig:
    """How the packed KV cache quantizes keys and values.

    Args:
        key_bits: 16 (keys are not quantized) or a value in [1, 2]: the fraction ``key_bits - 1``
            of each head's channels (those with the largest range) is stored at 2 bits, the rest at
            1 bit after ``key_transform``. 1.5 is VidKV's setting, 2 is KIVI's.
        value_bits: 16 (not quantized), 2 (KIVI) or 1.58 (ternary, five trits per byte).
        group_size: tokens per quantization group (channel-wise groups), or channels per group
            for ``value_axis="token"``.
        residual_length: newest tokens kept in full precision; a multiple of ``group_size``.
        key_transform: ``"fft"`` (orthonormal real DFT), ``"hadamard"`` (Sylvester
            Walsh-Hadamard / sqrt(n); the 1-bit channel count must be a power of two) or
            ``"none"``, applied to the 1-bit key channels of each token before the sign.
        value_axis: ``"channel"`` (per channel, groups of ``group_size`` tokens) or ``"token"``
            (KIVI's values: groups of ``group_size`` channels of one token; 2-bit values only).
        salient_ratio: with 1.58-bit values, the fraction of video tokens (scored against the
            prompt's text at prefill) whose values are stored at 2 bits instead.
        scale_dtype: storage of scales and zero points: ``"float16"``, ``"bfloat16"`` or
            ``"float8_e4m3fn"`` (saturated to +-448).

    Every invalid combination raises ValueError saying why.

    Example:
        >>> cfg = vidllm_ext.KVQuantConfig(key_bits=1.5, value_bits=1.58, group_size=32)
        >>> out = model.generate(**inputs, past_key_values=vidllm_ext.PackedKVCache(cfg))
    """

    key_bits: float = 1.5
    value_bits: float = 1.58
    group_size: int = 32
    residual_length: int = 128
    key_transform: str = "fft"
    value_axis: str = "channel"
    salient_ratio: float = 0.0
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        key_bits = _number(self.key_bits, "key_bits")
        if key_bits != FULL_PRECISION_BITS and not 1.0 <= key_bits <= 2.0:
            raise ValueError(
                f"KVQuantConfig: key_bits must be 16 (no quantization) or in [1, 2], got {key_bits}"
            )
        value_bits = _number(self.value_bits, "value_bits")
        if value_bits not in (FULL_PRECISION_BITS, 2, 1.58):
            raise ValueError(f"KVQuantConfig: value_bits must be 16, 2 or 1.58, got {value_bits}")
        group_size = _integer(self.group_size, "group_size")
        if group_size < 1:
            raise ValueError(f"KVQuantConfig: group_size must be >= 1, got {group_size}")
        residual = _integer(self.residual_length, "residual_length")
        if residual < 0 or residual % group_size:
            raise ValueError(
                "KVQuantConfig: residual_length must be a non-negative multiple of group_size "
                f"({group_size}), got {residual}"
            )
        for name, value, choices in (
            ("key_transform", self.key_transform, KEY_TRANSFORMS),
            ("value_axis", self.value_axis, VALUE_AXES),
            ("scale_dtype", self.scale_dtype, SCALE_DTYPES),
        ):
            if value not in choices:
                raise ValueError(
                    f"KVQuantConfig: {name} must be one of {', '.join(choices)}, got {value!r}"
                )
        if self.value_axis == "token" and value_bits != 2:
            raise ValueError(
                "KVQuantConfig: value_axis='token' (KIVI's per-token value groups) needs "
                f"value_bits=2, got {value_bits}"
            )
        salient = _number(self.salient_ratio, "salient_ratio")
        if not 0.0 <= salient <= 1.0:
            raise ValueError(f"KVQuantConfig: salient_ratio must be in [0, 1], got {salient}")
        if salient > 0 and value_bits != 1.58:
            raise ValueError(
                "KVQuantConfig: salient_ratio > 0 keeps salient tokens' values at 2 bits among "
                f"1.58-bit values, so it needs value_bits=1.58, got {value_bits}"
            )
        object.__setattr__(self, "key_bits", key_bits)
        object.__setattr__(self, "value_bits", value_bits)
        object.__setattr__(self, "group_size", group_size)
        object.__setattr__(self, "residual_length", residual)
        object.__setattr__(self, "salient_ratio", salient)

    @property
    def quantizes_keys(self) -> bool:
        return self.key_bits != FULL_PRECISION_BITS

    @property
    def quantizes_values(self) -> bool:
        return self.value_bits != FULL_PRECISION_BITS

    @property
    def quantizes(self) -> bool:
        return self.quantizes_keys or self.quantizes_values

    def two_bit_key_channels(self, head_dim: int) -> int:
        """round(D * (key_bits - 1)) (half to even): the key channels kept at 2 bits."""
        if not self.quantizes_keys:
            return head_dim
        return round(head_dim * (self.key_bits - 1.0))

    def check_head_dim(self, head_dim: int) -> None:
        """ValueError when this configuration cannot quantize heads of ``head_dim`` channels."""
        if head_dim < 1:
            raise ValueError(f"KVQuantConfig: head_dim must be >= 1, got {head_dim}")
        one_bit = head_dim - self.two_bit_key_channels(head_dim)
        hadamard = self.quantizes_keys and self.key_transform == "hadamard"
        if hadamard and one_bit > 0 and one_bit & (one_bit - 1):
            raise ValueError(
                f"KVQuantConfig: key_transform='hadamard' needs a power-of-two number of 1-bit "
                f"key channels; key_bits={self.key_bits} with head_dim={head_dim} gives {one_bit}"
            )


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"KVQuantConfig: {name} must be a finite number, got {value!r}")
    return float(value)


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"KVQuantConfig: {name} must be an int, got {value!r}")
    return value


# ---- packed types
TensorMap = Callable[[Tensor], Tensor]


def _tensor_bytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class PackedKeys:
    """Keys [B, H, T, D]: 2-bit channels (min/scale per channel group) and 1-bit channels.

    Attributes:
        codes2: uint8 [B, H, T, ceil(D2 / 4)], 2-bit codes of :attr:`channels2` per token.
        scale2, zero2: [B, H, NG, D2] in scale_dtype: x^ = code * scale + zero.
        codes1: uint8 [B, H, T, ceil(D1 / 8)], the signs of the transformed 1-bit channels.
        alpha1: [B, H, NG, D1] in scale_dtype: y^ = +-alpha, then the inverse transform.
        channel_split: int16 [H, D2], ascending, the 2-bit channels of each head; None when the
            split is implied (every channel at 2 bits, or every channel at 1 bit), so nothing
            is stored for it.
        head_dim: D; transform: "fft", "hadamard" or "none"; group_size: tokens per group;
        dtype: the dtype the keys came in (and dequantize to).
    """

    codes2: Tensor
    scale2: Tensor
    zero2: Tensor
    codes1: Tensor
    alpha1: Tensor
    channel_split: Tensor | None
    head_dim: int
    transform: str
    group_size: int
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        batch, heads, tokens = self.codes2.shape[:3]
        return batch, heads, tokens, self.head_dim

    @property
    def two_bit_channels(self) -> int:
        return self.scale2.shape[-1]

    @property
    def channels2(self) -> Tensor:
        """int64 [H, D2]: the 2-bit channels of each head, ascending."""
        if self.channel_split is not None:
            return self.channel_split.long()
        return self._implied(self.two_bit_channels)

    @property
    def channels1(self) -> Tensor:
        """int64 [H, D1]: the 1-bit channels of each head, ascending."""
        if self.channel_split is None:
            return self._implied(self.head_dim - self.two_bit_channels)
        return complement_channels(self.channels2, self.head_dim)

    def _implied(self, count: int) -> Tensor:
        channels = torch.arange(count, device=self.codes2.device)
        return channels.expand(self.shape[1], count) if count else channels.view(0, 0)

    @property
    def nbytes(self) -> int:
        """Every byte held: codes, scales, zero points and the channel split."""
        return _tensor_bytes(*_tensors(self))

    def map_batch(self, fn: TensorMap) -> PackedKeys:
        """The same keys with ``fn`` applied along the batch dimension (beam reorder, select)."""
        return _map_batch(self, fn, shared=("channel_split",))


@dataclass(frozen=True)
class PackedValues:
    """Values [B, H, T, D], quantized per channel (groups of tokens) or per token (KIVI).

    Attributes:
        mode: "minmax2" (2-bit, per channel), "token2" (2-bit, groups of channels of one token)
            or "trit" (1.58-bit, per channel).
        codes: uint8 [B, H, Tm, row bytes] for the Tm non-salient tokens, in token order.
        scale: [B, H, NG, D] (NG groups of group_size tokens), or [B, H, Tm, NGc] for "token2".
        zero: zero points shaped like ``scale`` for 2-bit modes, None for trits.
        salient_index: int64 [B, S], per sample the ascending positions (within these T tokens)
            stored at 2 bits in channel groups of their own; None when there are none.
        salient_codes, salient_scale, salient_zero: the salient tokens' 2-bit codes [B, H, S,
            ceil(D / 4)] and stats [B, H, ceil(S / group_size), D].
    """

    mode: str
    codes: Tensor
    scale: Tensor
    zero: Tensor | None
    group_size: int
    head_dim: int
    dtype: torch.dtype
    salient_index: Tensor | None = None
    salient_codes: Tensor | None = None
    salient_scale: Tensor | None = None
    salient_zero: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        batch, heads, tokens = self.codes.shape[:3]
        if self.salient_index is not None:
            tokens += self.salient_index.shape[1]
        return batch, heads, tokens, self.head_dim

    @property
    def nbytes(self) -> int:
        """Every byte held: codes, scales, zero points and salient positions."""
        return _tensor_bytes(*_tensors(self))

    @property
    def regular_index(self) -> Tensor:
        """int64 [B, Tm]: per sample, the ascending positions of the tokens stored in ``codes``
        (all T tokens when none is salient)."""
        batch, _, tokens, _ = self.shape
        device = self.codes.device
        if self.salient_index is None:
            return torch.arange(tokens, device=device).expand(batch, tokens)
        is_salient = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
        is_salient.scatter_(1, self.salient_index, True)
        order = torch.argsort(is_salient.to(torch.int8), dim=1, stable=True)
        return order[:, : self.codes.shape[2]]

    def map_batch(self, fn: TensorMap) -> PackedValues:
        return _map_batch(self, fn, shared=())


def complement_channels(channels2: Tensor, head_dim: int) -> Tensor:
    """int64 [H, D - D2]: the ascending channels of each head that are not in ``channels2``."""
    heads = channels2.shape[0]
    taken = torch.zeros(heads, head_dim, dtype=torch.bool, device=channels2.device)
    taken.scatter_(1, channels2, True)
    order = torch.argsort(taken.to(torch.int8), dim=1, stable=True)
    return order[:, : head_dim - channels2.shape[1]]


def _tensors(packed) -> list[Tensor]:
    values = (getattr(packed, f.name) for f in fields(packed))
    return [v for v in values if isinstance(v, Tensor)]


def _map_batch(packed, fn: TensorMap, shared: tuple[str, ...]):
    changes = {}
    for f in fields(packed):
        value = getattr(packed, f.name)
        if isinstance(value, Tensor) and f.name not in shared:
            changes[f.name] = fn(value)
    return replace(packed, **changes)


def _cat_fields(first, second, names: tuple[str, ...]):
    return replace(
        first, **{n: torch.cat([getattr(first, n), getattr(second, n)], 2) for n in names}
    )


def append_keys(first: PackedKeys, second: PackedKeys) -> PackedKeys:
    """Keys of ``first`` followed by ``second`` (same split; ``first`` holds whole groups)."""
    if first.shape[2] % first.group_size:
        raise ValueError("append_keys: the first block must hold whole groups of tokens")
    names = ("codes2", "scale2", "zero2", "codes1", "alpha1")
    return _cat_fields(first, second, names)


def can_append_values(first: PackedValues, second: PackedValues) -> bool:
    """Whether ``second`` continues ``first``'s groups: same mode, whole groups, no salient."""
    if first.mode != second.mode or first.salient_index is not None:
        return False
    if second.salient_index is not None:
        return False
    return first.mode == "token2" or first.codes.shape[2] % first.group_size == 0


def append_values(first: PackedValues, second: PackedValues) -> PackedValues:
    """Values of ``first`` followed by ``second``; see :func:`can_append_values`."""
    if not can_append_values(first, second):
        raise ValueError("append_values: the blocks do not continue each other's groups")
    names = ("codes", "scale") + (() if first.zero is None else ("zero",))
    return _cat_fields(first, second, names)


# ---- argument checks of the packing and group-quantization ops
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


def check_group_size(group_size: object) -> int:
    return check_int(group_size, "group_size", 1, MAX_GROUP_SIZE)


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits: expected an int, got {type(bits).__name__}")
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
    return check_float_tensor(x, "x", "[rows, tokens, channels]")


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
    check_shape(stats, name, shape)
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
    check_shape(out, "out", shape)
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


# ---- packed bit layouts (README, "Packed bit layouts") and the errors for codes and bytes they
# cannot hold, shared by the packing ops and their reference

# radix, digits per byte, digit of code 0 (the padding) of each layout
BITS1_LAYOUT = (2, 8, 0)
BITS2_LAYOUT = (4, 4, 0)
TRITS_LAYOUT = (3, 5, 1)
MODE_LAYOUT = {"minmax2": BITS2_LAYOUT, "sign1": BITS1_LAYOUT, "trit": TRITS_LAYOUT}


def unpack_digits(packed: torch.Tensor, layout: tuple[int, int, int]) -> torch.Tensor:
    """int64 digits [..., nb * per_byte] of uint8 packed [..., nb], padding included."""
    radix, per_byte, _ = layout
    weights = radix ** torch.arange(per_byte, device=packed.device)
    return ((packed.long()[..., None] // weights) % radix).flatten(-2)


def invalid_bytes(packed: torch.Tensor, n: int, layout: tuple[int, int, int]) -> torch.Tensor:
    """bool [..., nb]: bytes with a padding digit other than code 0's, or above radix^per_byte-1."""
    radix, per_byte, pad_digit = layout
    digits = unpack_digits(packed, layout).unflatten(-1, (packed.shape[-1], per_byte))
    position = torch.arange(digits.shape[-2] * per_byte, device=packed.device)
    padding = (position >= n).view(digits.shape[-2], per_byte)
    bad_padding = ((digits != pad_digit) & padding).any(-1)
    return bad_padding | (packed.long() >= radix**per_byte)


def _first_at(mask: torch.Tensor) -> list[int]:
    return mask.nonzero()[0].tolist()


def invalid_codes_error(codes: torch.Tensor, bits: int, count: int | None = None) -> ValueError:
    """The ValueError pack_bits raises: how many codes are >= 2**bits and the first of them
    (``count`` given: the kernel's count)."""
    bad = codes >= 2**bits
    count = int(bad.sum()) if count is None else count
    first = int(codes[bad][0])
    return ValueError(
        f"codes: {count} codes are outside [0, {2**bits}) for bits={bits}; the first is {first} "
        f"at {_first_at(bad)}"
    )


def invalid_trits_error(trits: torch.Tensor, count: int | None = None) -> ValueError:
    """The ValueError pack_trits raises: how many values are not in {-1, 0, 1}, and the first."""
    bad = (trits < -1) | (trits > 1)
    count = int(bad.sum()) if count is None else count
    first = int(trits[bad][0])
    return ValueError(
        f"trits: {count} values are not in {{-1, 0, 1}}; the first is {first} at {_first_at(bad)}"
    )


def invalid_bytes_error(
    packed: torch.Tensor, n: int, layout_name: str, count: int | None = None
) -> ValueError:
    """The ValueError unpack_bits / unpack_trits raise: how many bytes are invalid, the first."""
    layout = {"bits1": BITS1_LAYOUT, "bits2": BITS2_LAYOUT, "trits": TRITS_LAYOUT}[layout_name]
    bad = invalid_bytes(packed, n, layout)
    count = int(bad.sum()) if count is None else count
    first = int(packed[bad][0])
    rule = (
        "bytes above 242 and padding trits other than 0 are invalid"
        if layout_name == "trits"
        else "padding bits must be zero"
    )
    return ValueError(
        f"packed: {count} invalid bytes for n={n} ({rule}); the first is {first} at "
        f"{_first_at(bad)}"
    )


# ---- arguments of quantize_keys / quantize_values, shared by the ops and the oracle


def check_kv_tensor(x: Tensor, name: str) -> None:
    """A [B, H, T, D] float32/float16/bfloat16 key or value tensor (``name``: "k" or "v")."""
    check_float_tensor(x, name, "[B, H, T, D]")


def check_channel_split(split: Tensor, heads: int, head_dim: int, two_bit: int, device) -> Tensor:
    """The 2-bit channels of each head, int64 [H, D2] on ``device``, sorted ascending."""
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


def check_salient_mask(salient, batch: int, tokens: int, config, device) -> Tensor | None:
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


def key_channels(
    k: Tensor, config: KVQuantConfig, channel_split: Tensor | None, default_split
) -> tuple[Tensor, Tensor]:
    """The arguments of quantize_keys, checked: ``(channels2 [H, D2], channels1 [H, D1])``, the
    2-bit channels of each head (``channel_split``, or ``default_split(k, D2)``) and the rest,
    ascending, on k's device."""
    check_kv_tensor(k, "k")
    if not config.quantizes_keys:
        raise ValueError("quantize_keys: config.key_bits is 16, so keys are not quantized")
    _, heads, _, dim = k.shape
    config.check_head_dim(dim)
    two_bit = config.two_bit_key_channels(dim)
    if channel_split is None:
        channel_split = default_split(k, two_bit)
    channels2 = check_channel_split(channel_split, heads, dim, two_bit, k.device)
    return channels2, complement_channels(channels2, dim)
