"""Linear-attention layers inside a PackedKVCache (hybrid decoders such as Qwen3.5).

A hybrid decoder's Gated DeltaNet layers keep a recurrent state and a short convolution state,
no keys or values. :class:`LinearAttentionStates` gives :class:`vidllm_ext.PackedKVCache` those
layers, created on their first use (a forward visits its layers in order) as transformers' own
``LinearAttentionLayer``: the states are held and updated exactly as transformers' default cache
holds them; only the full-attention layers are packed.
"""

from __future__ import annotations

from transformers import cache_utils


def linear_attention_layer_class():
    """transformers' cache layer for linear attention, or None on a release without one."""
    return getattr(cache_utils, "LinearAttentionLayer", None)


def is_linear_layer(layer) -> bool:
    mixin = getattr(cache_utils, "LinearAttentionCacheLayerMixin", None)
    return mixin is not None and isinstance(layer, mixin)


def layer_states(layer) -> list:
    """A linear-attention layer's convolution states, then its recurrent states (tensors that
    exist): one of each per state index (a dict on newer releases, one tensor on older ones)."""
    states = []
    for held in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
        values = held.values() if isinstance(held, dict) else [held]
        states += [t for t in values if t is not None]
    return states


def state_nbytes(layer) -> int:
    """Bytes of a linear-attention layer's convolution and recurrent states."""
    return sum(t.numel() * t.element_size() for t in layer_states(layer))


class LinearAttentionStates:
    """Mixin for a ``Cache`` whose layers are created lazily: linear-attention calls
    (``get_conv_state``, ``update_recurrent_state``...) on a layer not created yet create it as a
    linear-attention layer."""

    def _linear_layer(self, layer_idx: int) -> None:
        if layer_idx < len(self.layers):
            return
        layer_class = linear_attention_layer_class()
        if layer_class is None:
            raise NotImplementedError(
                "PackedKVCache: this transformers release has no LinearAttentionLayer, so hybrid "
                "(linear-attention) decoders cannot use the packed cache"
            )
        if layer_idx != len(self.layers):
            raise RuntimeError(
                f"PackedKVCache: linear-attention layer {layer_idx} was used before layers "
                f"{len(self.layers)}..{layer_idx - 1} existed (layers must run in order)"
            )
        self.layers.append(layer_class())

    def get_conv_state(self, layer_idx: int, *args, **kwargs):
        self._linear_layer(layer_idx)
        return super().get_conv_state(layer_idx, *args, **kwargs)

    def update_conv_state(self, conv_states, layer_idx: int, *args, **kwargs):
        self._linear_layer(layer_idx)
        return super().update_conv_state(conv_states, layer_idx, *args, **kwargs)

    def get_recurrent_state(self, layer_idx: int, *args, **kwargs):
        self._linear_layer(layer_idx)
        return super().get_recurrent_state(layer_idx, *args, **kwargs)

    def update_recurrent_state(self, recurrent_states, layer_idx: int, *args, **kwargs):
        self._linear_layer(layer_idx)
        return super().update_recurrent_state(recurrent_states, layer_idx, *args, **kwargs)

    def has_previous_state(self, layer_idx: int | None = None, *args, **kwargs) -> bool:
        """False before any linear-attention layer exists (transformers would raise)."""
        if not any(is_linear_layer(layer) for layer in self.layers):
            return False
        return super().has_previous_state(layer_idx, *args, **kwargs)

    def is_recording_past(self, layer_idx: int) -> bool:
        return layer_idx < len(self.layers) and super().is_recording_past(layer_idx)
