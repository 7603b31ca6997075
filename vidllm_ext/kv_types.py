"""PackedKeys / PackedValues: what the sub-2-bit KV cache really stores, tensor by tensor.

Codes are packed per token along the quantized channels with the public layouts of
shared/DESIGN.md (2-bit: four per byte, 1-bit: eight per byte, trits: five per byte), so one
token's codes are one contiguous row. Statistics (scales, zero points, 1-bit magnitudes) are
stored in the configuration's ``scale_dtype``, one per channel and group of ``group_size``
tokens (per token and group of channels for KIVI's token-wise values).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

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
