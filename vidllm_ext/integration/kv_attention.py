"""vidllm's attention function: transformers' attention interface reading the packed KV cache.

``patch(model, kv=...)`` sets the decoder's ``config._attn_implementation`` to
``"vidllm_packed|<previous>"`` (e.g. ``vidllm_packed|sdpa``), registered here in transformers'
``AttentionInterface`` and ``AttentionMaskInterface``. The function reads
:class:`vidllm_ext.PackedKVCache` placeholders (keys carrying ``_vidllm_packed_layer``) with
``ops.packed_attention``; any other call (no cache, a cache whose tokens are all still in the
full-precision window, the vision tower) goes to the previous implementation with the mask that
implementation expects, so nothing else changes.
"""

from __future__ import annotations

import sys

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from vidllm_ext.ops.kv_attention import packed_attention

PREFIX = "vidllm_packed|"
LAYER_ATTRIBUTE = "_vidllm_packed_layer"


def previous_attention(module):
    """The attention function the module used before patching (``<previous>`` of its name)."""
    name = module.config._attn_implementation.removeprefix(PREFIX)
    if name != "eager":
        return ALL_ATTENTION_FUNCTIONS[name]
    # Each model family defines its own eager function: the module's is the one it would use.
    forward = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if forward is None:
        raise ValueError(f"{type(module).__name__}: no eager_attention_forward in its module")
    return forward


def as_bool_mask(attention_mask, q_len: int) -> torch.Tensor | None:
    """The mask a previous implementation's mask function made, as bool [B, Lq, T] (True =
    attend): sdpa's bool [B, 1, Lq, T], eager's additive float (0 = attend), flash's 2-D [B, T]."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        mask = attention_mask.bool()[:, None, :]
        return mask.expand(mask.shape[0], q_len, mask.shape[2])
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        shape = tuple(attention_mask.shape)
        raise ValueError(f"packed attention takes a [B, 1, Lq, T] or [B, T] mask, got {shape}")
    mask = attention_mask[:, 0]
    return mask if mask.dtype == torch.bool else mask == 0


def packed_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """An ``AttentionInterface`` function: [B, Lq, Hq, D] output and no attention weights."""
    layer = getattr(key, LAYER_ATTRIBUTE, None)
    if layer is None:
        return previous_attention(module)(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout:
        raise ValueError("packed attention reads a KV cache and is inference-only (dropout > 0)")
    mask = as_bool_mask(attention_mask, query.shape[2])
    out = packed_attention(query, layer, scale=scaling, mask=mask)
    return out.transpose(1, 2).contiguous(), None


def register(previous: str) -> str:
    """Registers ``vidllm_packed|previous`` (attention and mask functions); returns the name."""
    name = PREFIX + previous
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, packed_attention_forward)
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        mask_function = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(previous)
        if mask_function is None:
            raise ValueError(
                f"packed attention cannot wrap attention implementation {previous!r}: "
                f"transformers has no mask function for it"
            )
        AttentionMaskInterface.register(name, mask_function)
    return name


class AttentionImplementation:
    """A removable handle: the decoder config's attention implementation set to vidllm's."""

    def __init__(self, config) -> None:
        self.config = config
        self.previous = config._attn_implementation
        previous = (self.previous or "eager").removeprefix(PREFIX)
        config._attn_implementation = register(previous)

    def remove(self) -> None:
        self.config._attn_implementation = self.previous
