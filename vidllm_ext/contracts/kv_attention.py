"""Checks of the packed-KV structures an op is handed: ``PackedKeys``, ``PackedValues`` and
packed cache layers. Their tensors must agree with each other before a kernel reads them.

Shapes, dtypes and devices are always checked; index tensors (channel splits, salient positions)
are range-checked when :func:`vidllm_ext.contracts.structure.values_checked` says so (on the CPU by
default). Errors are ValueError/TypeError naming the field.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vidllm_ext.contracts import structure as values
from vidllm_ext.contracts.checks import FLOAT_DTYPES, ceil_div, check_device, check_int, check_shape
from vidllm_ext.contracts.kv_quant import KEY_TRANSFORMS, PackedKeys, PackedValues

SCALE_DTYPES = (*FLOAT_DTYPES, torch.float8_e4m3fn)
VALUE_MODES = ("minmax2", "token2", "trit")


def _tensor(value: object, name: str, shape: list[int] | None, dtypes, device) -> Tensor:
    """A tensor of one of ``dtypes`` with exactly ``shape`` (when given) on ``device``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        accepted = " or ".join(map(str, dtypes))
        raise TypeError(f"{name}: expected dtype {accepted}, got {value.dtype}")
    if shape is not None:
        check_shape(value, name, shape)
    if device is not None:
        check_device(value, name, device)
    return value


def _codes(value: object, name: str) -> Tensor:
    codes = _tensor(value, name, None, (torch.uint8,), None)
    if codes.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor [B, H, T, bytes], got {list(codes.shape)}")
    return codes


def _common(packed, name: str) -> None:
    check_int(packed.group_size, f"{name}.group_size", 1)
    check_int(packed.head_dim, f"{name}.head_dim", 1)
    if packed.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}.dtype: expected torch.float32, float16 or bfloat16, got {packed.dtype}"
        )


def check_packed_keys(packed: object, name: str = "packed") -> PackedKeys:
    """A PackedKeys whose codes, statistics and channel split agree (see module docstring)."""
    if not isinstance(packed, PackedKeys):
        raise TypeError(f"{name}: expected a PackedKeys, got {type(packed).__name__}")
    _common(packed, name)
    if packed.transform not in KEY_TRANSFORMS:
        raise ValueError(
            f"{name}.transform: expected one of {KEY_TRANSFORMS}, got {packed.transform!r}"
        )
    codes2 = _codes(packed.codes2, f"{name}.codes2")
    batch, heads, tokens, _ = codes2.shape
    device, group, dim = codes2.device, packed.group_size, packed.head_dim
    scale2 = _tensor(packed.scale2, f"{name}.scale2", None, SCALE_DTYPES, device)
    groups = ceil_div(tokens, group)
    if scale2.dim() != 4 or list(scale2.shape[:3]) != [batch, heads, groups]:
        raise ValueError(
            f"{name}.scale2: expected shape [{batch}, {heads}, {groups}, D2] (codes2 holds "
            f"{tokens} tokens in groups of {group}), got {list(scale2.shape)}"
        )
    two_bit = scale2.shape[3]
    one_bit = dim - two_bit
    if one_bit < 0:
        raise ValueError(f"{name}.scale2: {two_bit} 2-bit channels exceed head_dim {dim}")
    stats = (scale2.dtype,)
    _tensor(packed.zero2, f"{name}.zero2", list(scale2.shape), stats, device)
    shape = [batch, heads, tokens]
    _tensor(codes2, f"{name}.codes2", [*shape, ceil_div(two_bit, 4)], (torch.uint8,), device)
    _tensor(packed.codes1, f"{name}.codes1", [*shape, ceil_div(one_bit, 8)], (torch.uint8,), device)
    _tensor(packed.alpha1, f"{name}.alpha1", [batch, heads, groups, one_bit], stats, device)
    if packed.transform == "hadamard" and one_bit & (one_bit - 1):
        raise ValueError(f"{name}.transform: hadamard needs a power-of-two 1-bit channel count")
    split = packed.channel_split
    if split is None:
        if two_bit not in (0, dim):
            raise ValueError(
                f"{name}.channel_split: required when only {two_bit} of {dim} channels are 2-bit"
            )
        return packed
    _tensor(split, f"{name}.channel_split", [heads, two_bit], (torch.int16,), device)
    if values.values_checked(split):
        values.check_range(split, f"{name}.channel_split", 0, dim)
        values.check_ascending(split, f"{name}.channel_split", strict=True)
    return packed


def _value_stats_shape(mode: str, batch: int, heads: int, tokens: int, dim: int, group: int):
    if mode == "token2":
        return [batch, heads, tokens, ceil_div(dim, group)]
    return [batch, heads, ceil_div(tokens, group), dim]


def check_packed_values(packed: object, name: str = "packed") -> PackedValues:
    """A PackedValues whose codes, statistics and salient tokens agree."""
    if not isinstance(packed, PackedValues):
        raise TypeError(f"{name}: expected a PackedValues, got {type(packed).__name__}")
    _common(packed, name)
    mode = packed.mode
    if mode not in VALUE_MODES:
        raise ValueError(f"{name}.mode: expected one of {VALUE_MODES}, got {mode!r}")
    codes = _codes(packed.codes, f"{name}.codes")
    batch, heads, tokens, _ = codes.shape
    device, group, dim = codes.device, packed.group_size, packed.head_dim
    row_bytes = ceil_div(dim, 5 if mode == "trit" else 4)
    _tensor(codes, f"{name}.codes", [batch, heads, tokens, row_bytes], (torch.uint8,), device)
    stats_shape = _value_stats_shape(mode, batch, heads, tokens, dim, group)
    scale = _tensor(packed.scale, f"{name}.scale", stats_shape, SCALE_DTYPES, device)
    if mode == "trit":
        if packed.zero is not None:
            raise ValueError(f"{name}.zero: expected None for trits, got a tensor")
    else:
        _tensor(packed.zero, f"{name}.zero", stats_shape, (scale.dtype,), device)
    _check_salient(packed, name, batch, heads, tokens, scale.dtype)
    return packed


def _check_salient(packed: PackedValues, name: str, batch, heads, regular, stats_dtype) -> None:
    fields = ("salient_index", "salient_codes", "salient_scale", "salient_zero")
    present = [getattr(packed, f) is not None for f in fields]
    if not any(present):
        return
    if not all(present):
        raise ValueError(f"{name}: expected all of {', '.join(fields)} or none of them")
    device, dim = packed.codes.device, packed.head_dim
    index = _tensor(packed.salient_index, f"{name}.salient_index", None, (torch.int64,), device)
    if index.dim() != 2 or index.shape[0] != batch:
        raise ValueError(
            f"{name}.salient_index: expected shape [{batch}, S], got {list(index.shape)}"
        )
    count = index.shape[1]
    shape = [batch, heads, count, ceil_div(dim, 4)]
    _tensor(packed.salient_codes, f"{name}.salient_codes", shape, (torch.uint8,), device)
    stats = [batch, heads, ceil_div(count, packed.group_size), dim]
    _tensor(packed.salient_scale, f"{name}.salient_scale", stats, (stats_dtype,), device)
    _tensor(packed.salient_zero, f"{name}.salient_zero", stats, (stats_dtype,), device)
    if values.values_checked(index):
        values.check_range(index, f"{name}.salient_index", 0, regular + count)
        values.check_ascending(index, f"{name}.salient_index", strict=True)


def check_packed_layer(layer) -> None:
    """A packed cache layer (``cache.layers[i]``) whose window and blocks agree: the metadata of
    every block plus the index checks above."""
    keys, window_values = layer.keys, layer.values
    keys = _tensor(keys, "layer_state.keys", None, FLOAT_DTYPES, None)
    if keys.dim() != 4:
        raise ValueError(f"layer_state.keys: expected [B, H, W, D], got {list(keys.shape)}")
    _tensor(window_values, "layer_state.values", list(keys.shape), (keys.dtype,), keys.device)
    batch, heads, _, dim = keys.shape
    quantized = check_int(layer.quantized_length, "layer_state.quantized_length", 0)
    key_blocks, value_blocks = list(layer.key_blocks), list(layer.value_blocks)
    if quantized and len(key_blocks) != 1:
        raise ValueError(
            f"layer_state.key_blocks: expected one block for {quantized} quantized tokens, got "
            f"{len(key_blocks)}"
        )
    if not quantized and (key_blocks or value_blocks):
        raise ValueError("layer_state: blocks are present but quantized_length is 0")
    expected = [batch, heads, quantized, dim]
    _check_block(key_blocks[0] if key_blocks else None, "layer_state.key_blocks[0]", expected, keys)
    total = 0
    for i, block in enumerate(value_blocks):
        total += _check_block(block, f"layer_state.value_blocks[{i}]", None, keys)
    if total != quantized:
        raise ValueError(
            f"layer_state.value_blocks: expected {quantized} tokens in all, got {total}"
        )
    _check_scale_dtypes([*key_blocks, *value_blocks])


def _check_block(block, name: str, shape: list[int] | None, window: Tensor) -> int:
    """A key or value block like the window ([B, H, ·, D] on its device); its token count."""
    if block is None:
        return 0
    if isinstance(block, Tensor):
        _tensor(block, name, None, (window.dtype,), window.device)
        block_shape = list(block.shape)
    elif isinstance(block, PackedKeys):
        block_shape = list(check_packed_keys(block, name).shape)
    elif isinstance(block, PackedValues):
        block_shape = list(check_packed_values(block, name).shape)
    else:
        raise TypeError(f"{name}: expected a tensor or packed block, got {type(block).__name__}")
    device = block.device if isinstance(block, Tensor) else _first_tensor(block).device
    if device != window.device:
        raise ValueError(f"{name}: expected a block on {window.device}, got {device}")
    like = shape if shape is not None else [*window.shape[:2], block_shape[2], window.shape[3]]
    if block_shape != like:
        raise ValueError(f"{name}: expected shape {like} (from the window), got {block_shape}")
    return block_shape[2]


def _first_tensor(block) -> Tensor:
    return block.codes2 if isinstance(block, PackedKeys) else block.codes


def _check_scale_dtypes(blocks) -> None:
    dtypes = set()
    for block in blocks:
        if isinstance(block, PackedKeys):
            dtypes.add(block.scale2.dtype)
        elif isinstance(block, PackedValues):
            dtypes.add(block.scale.dtype)
    if len(dtypes) > 1:
        raise ValueError(f"layer_state: blocks store statistics in different dtypes {dtypes}")
