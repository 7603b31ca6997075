"""KVQuantConfig: what the sub-2-bit KV cache stores (VidKV / KIVI), validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
