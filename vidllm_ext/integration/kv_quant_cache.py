"""PackedKVCache: a transformers Cache whose old tokens really occupy 1.x bits per element.

Each layer keeps the newest tokens in full precision (the residual window) and moves older ones,
in whole groups of ``group_size`` tokens, into packed codes (:mod:`vidllm_ext.contracts.kv_quant`)
through
the C++/CUDA quantizers. A token is quantized exactly once, when it leaves the window; the key
channel split is fixed at a layer's first flush from the tokens present then.

Attention sees what the cache holds: ``update`` returns the dequantized old tokens followed by
the window, so the tokens a step flushes are attended in their quantized form at once. With
``packed_attention=True`` (what ``vidllm_ext.patch(model, kv=...)`` sets up) nothing is
dequantized: once tokens are packed, ``update`` returns placeholders that carry the layer, and
the registered attention function (:mod:`vidllm_ext.integration.kv_attention`) reads the codes,
statistics and window directly through ``ops.packed_attention``.
"""

from __future__ import annotations

from functools import partial
from typing import Union

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from vidllm_ext import ops
from vidllm_ext.contracts.kv_quant import (
    KVQuantConfig,
    PackedKeys,
    PackedValues,
    append_keys,
    append_values,
    can_append_values,
)
from vidllm_ext.integration.compat import CacheLayerShims
from vidllm_ext.integration.kv_quant_linear_states import LinearAttentionStates, state_nbytes
from vidllm_ext.ops.kv_quant import key_channel_split

KeyBlock = Union[PackedKeys, Tensor]  # a Tensor when key_bits is 16
ValueBlock = Union[PackedValues, Tensor]


class SalientTokens:
    """Per sample, the absolute positions whose values are stored at 2 bits (VidKV).

    Shared by the layers of one cache. So that every sample of a batch stores the same number of
    2-bit tokens per flushed block (the packed layout is rectangular), a sample with fewer
    salient tokens in a block has its earliest other tokens of that block stored at 2 bits too;
    with one sample, or equal layouts, the salient set is exactly the marked one.
    """

    def __init__(self) -> None:
        self.mask: Tensor | None = None  # bool [B, positions marked so far]

    def mark(self, mask: Tensor, offset: int) -> None:
        mask = mask.detach().to("cpu", torch.bool)
        stop = offset + mask.shape[1]
        current = self.mask if self.mask is not None else mask.new_zeros(mask.shape[0], 0)
        if current.shape[0] not in (0, mask.shape[0]):
            raise ValueError(
                f"salient mask has batch {mask.shape[0]}, the cache holds {current.shape[0]}"
            )
        grown = mask.new_zeros(mask.shape[0], max(stop, current.shape[1]))
        grown[:, : current.shape[1]] = current
        grown[:, offset:stop] |= mask
        self.mask = grown

    def block(self, start: int, stop: int, device) -> Tensor | None:
        """bool [B, stop - start] with equal counts per row, or None when nothing is salient."""
        if self.mask is None or start >= self.mask.shape[1]:
            return None
        chunk = self.mask[:, start:stop]
        chunk = torch.cat(
            [chunk, chunk.new_zeros(chunk.shape[0], stop - start - chunk.shape[1])], 1
        )
        counts = chunk.sum(1)
        if int(counts.max()) == 0:
            return None
        missing = counts.max() - counts
        others_rank = (~chunk).cumsum(1)  # 1 for a row's earliest non-salient token, ...
        chunk = chunk | (~chunk & (others_rank <= missing[:, None]))
        return chunk.to(device)

    def map_batch(self, fn) -> None:
        if self.mask is not None:
            self.mask = fn(self.mask.to(torch.int8)).to("cpu", torch.bool)


class CacheOptions:
    """Settings shared by the layers of one cache (they may change after the layers exist)."""

    def __init__(self, packed_attention: bool = False) -> None:
        self.packed_attention = packed_attention


class PackedKVLayer(CacheLayerShims, CacheLayerMixin):
    """One decoder layer's packed cache: quantized blocks followed by the full-precision window."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        config: KVQuantConfig,
        salient: SalientTokens | None = None,
        options: CacheOptions | None = None,
    ):
        super().__init__()
        self.config = config
        self.salient = salient if salient is not None else SalientTokens()
        self.options = options if options is not None else CacheOptions()
        self.key_blocks: list[KeyBlock] = []
        self.value_blocks: list[ValueBlock] = []
        self.channel_split: Tensor | None = None
        self.quantized_length = 0

    # ---- the transformers layer interface ---------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.config.check_head_dim(key_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self._flush_whole_groups()
        if not self.key_blocks:
            return self.keys, self.values
        if self.options.packed_attention:
            return self.attention_placeholders()
        old_keys, old_values = self.dequantized_old()
        return torch.cat([old_keys, self.keys], -2), torch.cat([old_values, self.values], -2)

    def attention_placeholders(self) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, T, D] for the packed attention function: NaN everywhere (one
        stored element, expanded) with this layer attached as ``_vidllm_packed_layer``. Any
        other attention function reading them returns NaN, never a silently wrong answer."""
        batch, heads, _, dim = self.keys.shape
        shape = (batch, heads, self.get_seq_length(), dim)
        keys = self.keys.new_full((1, 1, 1, 1), float("nan")).expand(shape)
        values = self.values.new_full((1, 1, 1, 1), float("nan")).expand(shape)
        keys._vidllm_packed_layer = values._vidllm_packed_layer = self
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.quantized_length + self.keys.shape[-2]

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False
        self.key_blocks, self.value_blocks = [], []
        self.channel_split = None
        self.quantized_length = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            index = beam_idx.to(self.device)
            self._map_batch(lambda t: t.index_select(0, index))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.is_initialized:
            self._map_batch(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count: the number of tokens to remove")
        remove = -tokens_to_remove
        if remove == 0 or not self.is_initialized:
            return
        if remove > self.keys.shape[-2]:
            raise NotImplementedError(
                f"PackedKVCache can remove only full-precision window tokens "
                f"({self.keys.shape[-2]} now), not {remove}: older tokens are already packed"
            )
        self.keys = self.keys[:, :, : self.keys.shape[-2] - remove]
        self.values = self.values[:, :, : self.values.shape[-2] - remove]

    def offload(self):
        raise NotImplementedError("PackedKVCache does not support offloading")

    def prefetch(self):
        raise NotImplementedError("PackedKVCache does not support offloading")

    # ---- packed storage ---------------------------------------------------------------------

    def dequantized_old(self) -> tuple[Tensor, Tensor]:
        """The quantized part as [B, H, Tq, D] keys and values, in token order."""
        keys = [_dequantize_key_block(block) for block in self.key_blocks]
        values = [_dequantize_value_block(block) for block in self.value_blocks]
        if not keys:
            return self.keys[:, :, :0], self.values[:, :, :0]
        return torch.cat(keys, -2), torch.cat(values, -2)

    def dequantized(self) -> tuple[Tensor, Tensor]:
        """All cached tokens as [B, H, T, D] keys and values: quantized part, then the window."""
        if not self.is_initialized:
            raise ValueError("this cache layer holds no tokens yet")
        old_keys, old_values = self.dequantized_old()
        return torch.cat([old_keys, self.keys], -2), torch.cat([old_values, self.values], -2)

    def quantized_nbytes(self) -> int:
        """Bytes of the quantized part: codes, scales, zero points, channel split."""
        blocks = [*self.key_blocks, *self.value_blocks]
        return sum(_block_nbytes(block) for block in blocks)

    def nbytes(self) -> int:
        """Every byte this layer holds: the quantized part and the full-precision window."""
        window = 0
        if self.is_initialized:
            window = sum(t.numel() * t.element_size() for t in (self.keys, self.values))
        return self.quantized_nbytes() + window

    def quantized_elements(self) -> int:
        """Key and value elements in the quantized part (2 x B x H x Tq x D)."""
        if not self.is_initialized:
            return 0
        batch, heads, _, dim = self.keys.shape
        return 2 * batch * heads * self.quantized_length * dim

    def _flush_whole_groups(self) -> None:
        config = self.config
        if not config.quantizes:
            return
        window = self.keys.shape[-2]
        excess = window - config.residual_length
        if excess < config.group_size:
            return
        count = excess - excess % config.group_size
        keys, values = self.keys[:, :, :count], self.values[:, :, :count]
        start = self.quantized_length
        self._append_keys(keys)
        self._append_values(values, self.salient.block(start, start + count, values.device))
        self.keys, self.values = self.keys[:, :, count:], self.values[:, :, count:]
        self.quantized_length += count

    def _append_keys(self, keys: Tensor) -> None:
        if not self.config.quantizes_keys:
            self.key_blocks = [torch.cat([*self.key_blocks, keys], -2)]
            return
        if self.channel_split is None:
            # Fixed from the tokens present at this layer's first flush, window included.
            two_bit = self.config.two_bit_key_channels(keys.shape[-1])
            self.channel_split = key_channel_split(self.keys, two_bit)
        block = ops.quantize_keys(keys, self.config, channel_split=self.channel_split)
        self.key_blocks = [append_keys(self.key_blocks[0], block)] if self.key_blocks else [block]

    def _append_values(self, values: Tensor, salient: Tensor | None) -> None:
        if not self.config.quantizes_values:
            self.value_blocks = [torch.cat([*self.value_blocks, values], -2)]
            return
        block = ops.quantize_values(values, self.config, salient=salient)
        if self.value_blocks and can_append_values(self.value_blocks[-1], block):
            self.value_blocks[-1] = append_values(self.value_blocks[-1], block)
        else:
            self.value_blocks.append(block)

    def _map_batch(self, fn) -> None:
        self.keys, self.values = fn(self.keys), fn(self.values)
        self.key_blocks = [_map_block(block, fn) for block in self.key_blocks]
        self.value_blocks = [_map_block(block, fn) for block in self.value_blocks]


class PackedKVCache(LinearAttentionStates, Cache):
    """A transformers ``Cache`` storing keys and values at 1-2 bits (VidKV, KIVI), for real.

    Args:
        config: the :class:`vidllm_ext.KVQuantConfig`.
        packed_attention: let attention read the packed codes directly instead of receiving
            dequantized keys and values from ``update``. Needs a model whose attention is
            vidllm's (``vidllm_ext.patch(model, kv=...)`` installs it and turns this on for
            the caches its ``generate`` and :class:`StreamingSession` use); any other attention
            function would read NaN placeholders.

    Works with ``model.generate`` (greedy, sampling, beam search, padded batches) for any decoder
    with full-attention layers. In a hybrid decoder (Qwen3.5) only the full-attention layers are
    packed; the linear-attention layers keep their recurrent and convolution states as
    transformers' own cache does (:mod:`vidllm_ext.integration.kv_quant_linear_states`).
    ``nbytes()`` counts every byte
    held, those states included; ``bits_per_element()`` the quantized part's bits per key/value
    element; ``layers[i].dequantized()`` returns a full-attention layer's [B, H, T, D] keys and
    values for checks.

    Example:
        >>> cache = vidllm_ext.PackedKVCache(vidllm_ext.KVQuantConfig(1.5, 1.58))
        >>> out = model.generate(**inputs, past_key_values=cache, max_new_tokens=64)
        >>> cache.bits_per_element()
    """

    def __init__(self, config: KVQuantConfig | None = None, *, packed_attention: bool = False):
        config = KVQuantConfig() if config is None else config
        if not isinstance(config, KVQuantConfig):
            raise TypeError(
                f"PackedKVCache takes a vidllm_ext.KVQuantConfig, got {type(config).__name__}"
            )
        self.config = config
        self.salient = SalientTokens()
        self.options = CacheOptions(bool(packed_attention))
        super().__init__(
            layer_class_to_replicate=partial(PackedKVLayer, config, self.salient, self.options)
        )

    @property
    def packed_attention(self) -> bool:
        """Whether attention reads the packed codes directly (see the class docstring)."""
        return self.options.packed_attention

    @packed_attention.setter
    def packed_attention(self, value: bool) -> None:
        self.options.packed_attention = bool(value)

    def mark_salient(self, mask: Tensor, offset: int | None = None) -> None:
        """Store the values of these tokens at 2 bits (needs ``salient_ratio`` > 0).

        Args:
            mask: bool [B, L] over the tokens about to be fed.
            offset: absolute position of the mask's first column; by default the cache's
                current length (the mask covers the next forward's tokens).
        """
        if self.config.salient_ratio == 0:
            raise ValueError("mark_salient needs a KVQuantConfig with salient_ratio > 0")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise TypeError("mark_salient takes a bool mask [B, L]")
        self.salient.mark(mask, self.get_seq_length() if offset is None else offset)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.salient.map_batch(lambda t: t.index_select(0, beam_idx.cpu()))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.salient.map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self.salient.map_batch(lambda t: t[indices.cpu()])

    def nbytes(self) -> int:
        """Every byte held: codes, scales, zero points, channel splits and the windows, and the
        recurrent and convolution states of linear-attention layers."""
        return sum(
            layer.nbytes() if isinstance(layer, PackedKVLayer) else state_nbytes(layer)
            for layer in self.layers
        )

    def bits_per_element(self) -> float:
        """8 x the quantized part's bytes / the number of key and value elements it holds
        (full-attention layers only: linear-attention states are not quantized)."""
        packed = [layer for layer in self.layers if isinstance(layer, PackedKVLayer)]
        elements = sum(layer.quantized_elements() for layer in packed)
        if elements == 0:
            raise ValueError("bits_per_element: no token has been quantized yet")
        return 8.0 * sum(layer.quantized_nbytes() for layer in packed) / elements


def _dequantize_key_block(block: KeyBlock) -> Tensor:
    return block if isinstance(block, Tensor) else ops.dequantize_keys(block)


def _dequantize_value_block(block: ValueBlock) -> Tensor:
    return block if isinstance(block, Tensor) else ops.dequantize_values(block)


def _block_nbytes(block) -> int:
    return block.numel() * block.element_size() if isinstance(block, Tensor) else block.nbytes


def _map_block(block, fn):
    return fn(block) if isinstance(block, Tensor) else block.map_batch(fn)
