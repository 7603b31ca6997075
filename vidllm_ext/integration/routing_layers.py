"""Layer-skip routing of video tokens inside a patched model (VideoLLM-MoD).

In a routed decoder layer a router ``Linear(hidden_size -> 1)`` scores every video token of its
input h; in each temporal step of each video the top ``ceil(keep_ratio * n)`` are selected, and
every other token (text, images, padding) is always selected. The selected tokens, in their
original order with their original position ids, go through the unmodified layer on a shortened,
left-padded batch; ``delta = layer(h_sel) - h_sel`` is added back, gated for video tokens
(``ops.routed_update``). Unselected tokens pass through unchanged and write no key or value: the
KV cache of a routed layer holds the text and the selected video tokens only.

Every routed layer therefore has its own cache length. Transformers builds one mask from layer 0
(which must not be routed); a routed layer ignores it and builds its own additive mask from the
validity of the cache entries it wrote (kept per cache layer) and the causal order of its new
tokens, the same for sdpa and eager.

Hybrid decoders (Qwen3.5): a routed linear-attention (Gated DeltaNet) layer runs its selected
tokens, in order, as the shorter sequence: unselected tokens never enter its convolution or
recurrent state. It holds no KV, so it saves no KV bytes; its padding mask is the 2-D mask of the
selected layout. Transformers sizes every full-attention mask from the first full-attention
layer's cache, so that layer is routed only together with every other full-attention layer.

Sparse-MoE layers: unselected tokens never reach the expert router or an expert; the routed call's
MoE block also skips the left padding of the selected layout, so a layer computes exactly
``top_k`` expert assignments per selected token (``RoutingStats.expert_assignments_skipped``).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from vidllm_ext import ops
from vidllm_ext.integration.compat import pop_cache, with_cache
from vidllm_ext.integration.routing_blocks import (
    RealRowsOnly,
    experts_per_token,
    is_linear_attention,
    sparse_moe_block,
)
from vidllm_ext.integration.routing_context import (
    RoutingContext,
    RoutingRuntime,
    check_attention_implementation,
)
from vidllm_ext.integration.sequence import CompactedLayout

ROUTER_NAME = "vidllm_router"


def resolve_layers(layers, count: int, layer_types=None) -> tuple[int, ...]:
    """The routed decoder layer indices: ``"interleaved"`` is 1, 3, 5, ... below ``count``.

    ``layer_types``: the text config's per-layer kinds (hybrid decoders), or None."""
    routed = tuple(range(1, count, 2)) if layers == "interleaved" else tuple(layers)
    for index in routed:
        if index >= count:
            raise ValueError(
                f"mod.layers: layer {index} is out of range; the language model has {count} "
                f"decoder layers (0 to {count - 1})"
            )
        if index == 0:
            raise ValueError(
                "mod.layers: layer 0 cannot be routed: transformers reads the KV cache length "
                "from layer 0, so it must see every token"
            )
    _check_first_full_attention(routed, layer_types)
    return routed


def _check_first_full_attention(routed: tuple[int, ...], layer_types) -> None:
    """Transformers sizes the full-attention mask of every layer from the first full-attention
    layer's cache: routing that layer alone would give the others a mask of the wrong length."""
    if not layer_types or "linear_attention" not in layer_types:
        return
    full = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    unrouted = [i for i in full if i not in routed]
    if full and full[0] in routed and unrouted:
        raise ValueError(
            f"mod.layers: layer {full[0]} is the first full-attention layer of this hybrid "
            f"decoder; transformers sizes every full-attention mask from its cache, so it can be "
            f"routed only together with every full-attention layer (unrouted: {unrouted})"
        )


def install_routing(adapter, forward, state, model, routers: dict | None = None, kv=None):
    """Adds a router to every routed decoder layer of ``model`` and routes its forward.

    Args:
        adapter: the family adapter.
        forward: the patch's ``ForwardInputs`` (the multimodal call's inputs and the layout the
            video-token stages gave it), read by the routing stage.
        state: the patch's ``RoutingState`` (its ``config`` the :class:`MoDConfig`; the stage
            writes its ``stats``).
        model: the patched model.
        routers: decoder layer index -> router module to reuse (the trained routers of an
            earlier patch, same parameters); a routed layer without one gets a new zero router.

    Returns:
        ``(stage, handles)``: the language-model stage that builds each forward's routing
        context (the patch runs it after the video-token and KV stages), and one removable
        handle per routed layer (removing it deletes the router and restores the layer's
        forward).

    Raises:
        ValueError: a layer index out of range, or layer 0.
        NotImplementedError: an attention implementation other than sdpa / eager, or ``kv=``.

    Example:
        >>> vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.2))
        >>> model.state_dict()["model.language_model.layers.1.vidllm_router.weight"].shape
        torch.Size([1, 2048])
    """
    language_model = adapter.language_model
    if kv is not None:
        raise NotImplementedError(
            "mod= with kv=: routing with the packed KV cache is not supported yet"
        )
    check_attention_implementation(language_model.config)
    layer_types = getattr(language_model.config, "layer_types", None)
    routed = resolve_layers(state.config.layers, len(language_model.layers), layer_types)
    runtime = RoutingRuntime(adapter, forward, state, routed, language_model.config)
    handles = []
    for position, index in enumerate(routed):
        router = (routers or {}).get(index)
        handles.append(RoutedLayer(language_model.layers[index], index, position, runtime, router))
    return runtime.before_decoder, handles


def existing_routers(language_model: nn.Module) -> dict:
    """Decoder layer index -> the router a current patch added to it."""
    return {
        index: layer._modules[ROUTER_NAME]
        for index, layer in enumerate(language_model.layers)
        if ROUTER_NAME in layer._modules
    }


class RoutedLayer:
    """A removable handle: one decoder layer with a router and a routed forward."""

    def __init__(
        self,
        layer: nn.Module,
        index: int,
        position: int,
        runtime: RoutingRuntime,
        router: nn.Module | None = None,
    ):
        self.layer, self.index, self.position, self.runtime = layer, index, position, runtime
        config = runtime.text_config
        self.kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.linear = is_linear_attention(config, index)  # no KV: a recurrent and a conv state
        moe = sparse_moe_block(layer)
        self.experts_per_token = 0 if moe is None else experts_per_token(moe, config)
        self.moe = None if moe is None else RealRowsOnly(moe)
        if router is None:
            reference = next(layer.parameters())
            router = nn.Linear(
                config.hidden_size, 1, device=reference.device, dtype=reference.dtype
            )
            nn.init.zeros_(router.weight)
            nn.init.zeros_(router.bias)
        layer.add_module(ROUTER_NAME, router)
        self.original_forward = layer.forward
        # cache layer -> (bool [B, held]: its real entries, weak reference to the keys written last)
        self.written = weakref.WeakKeyDictionary()
        layer.forward = self.forward

    def remove(self) -> None:
        layer = self.layer
        if "forward" in vars(layer):
            del layer.forward
        if ROUTER_NAME in layer._modules:
            del layer._modules[ROUTER_NAME]
        if self.moe is not None:
            self.moe.remove()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask=None,
        position_ids=None,
        use_cache=False,
        position_embeddings=None,
        **kwargs,
    ):
        """The decoder layer's forward, routed (``attention_mask`` is replaced by its own); the
        cache comes under the keyword the installed transformers uses (see ``compat``)."""
        context = self.runtime.context_for(hidden_states)
        cache = pop_cache(kwargs)
        inputs = dict(position_ids=position_ids, position_embeddings=position_embeddings, **kwargs)

        def run(keep: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
            return self._run_selected(
                rows, keep, hidden_states.shape, context, cache, use_cache, inputs
            )

        if context.video_tokens == 0:  # nothing to route: every token goes through
            return run(None, hidden_states.flatten(0, 1)).view_as(hidden_states)
        batch, length, dim = hidden_states.shape
        scores = getattr(self.layer, ROUTER_NAME)(hidden_states).squeeze(-1)

        def layer_fn(selected: torch.Tensor, selected_index: torch.Tensor) -> torch.Tensor:
            keep = torch.zeros(batch * length, dtype=torch.bool, device=selected.device)
            keep[selected_index] = True
            self._record(context, selected_index.numel(), hidden_states)
            return run(keep.view(batch, length), selected)

        config = self.runtime.config
        output = ops.routed_update(
            hidden_states.reshape(batch * length, dim),
            scores.reshape(batch * length),
            context.is_video,
            context.segment_offsets,
            config.keep_ratio,
            layer_fn,
            config.gate,
        )
        return output.view(batch, length, dim)

    def _run_selected(self, rows, keep, shape, context, cache, use_cache, inputs):
        """The original layer on ``rows`` ``[K, D]`` (the tokens where ``keep`` ``[B, L]`` is
        True, row-major; None: all) as a left-padded batch; returns its ``[K, D]`` output."""
        batch, length, dim = shape
        slots = None
        if keep is None:
            padded, real, moved = rows.view(shape), context.real, dict(inputs)
        else:
            layout = CompactedLayout.from_keep(keep)
            slots = layout.attention_mask.bool()
            padded = rows.new_zeros(batch, slots.shape[1], dim).index_put((slots,), rows)
            real = slots & context.real.gather(1, layout.source_column)
            moved = {name: _to_layout(value, layout, length) for name, value in inputs.items()}
        if self.linear:  # the recurrent layer's 2-D padding mask over the selected layout
            history, mask = None, None if bool(real.all()) else real.long()
        else:
            history = self._history(cache, batch, rows.device)
            mask = _additive_mask(history, real, rows.dtype)
        with_cache(moved, cache, self.original_forward)
        if self.moe is not None:
            self.moe.rows = real
        try:
            output = self.original_forward(
                padded, attention_mask=mask, use_cache=use_cache, **moved
            )
        finally:
            if self.moe is not None:
                self.moe.rows = None
        if isinstance(output, tuple):
            output = output[0]
        if history is not None:
            self._remember(cache, history, real)
        return output.reshape(batch * length, dim) if slots is None else output[slots]

    def _history(self, cache, batch: int, device):
        """bool ``[B, held]``: the real entries among those this layer wrote to ``cache``."""
        empty = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        cache_layer = _cache_layer(cache, self.index)
        held = 0 if cache_layer is None else cache_layer.get_seq_length()
        if held == 0:
            return empty
        written, keys = self.written.get(cache_layer, (None, None))
        # The cache's keys are the tensor this layer's last write left: nothing reordered,
        # cropped or replaced them since (beam search reorders rows between steps).
        if written is None or keys() is not cache_layer.keys or written.shape[0] != batch:
            raise RuntimeError(
                f"routing: the KV cache of routed layer {self.index} holds {held} entries per row "
                "that were not left there by this layer's last write (a cache filled elsewhere, "
                "cropped or reordered, e.g. by beam search, which routing does not support)"
            )
        return written.to(device)

    def _remember(self, cache, history: torch.Tensor, real: torch.Tensor) -> None:
        cache_layer = _cache_layer(cache, self.index)
        if cache_layer is None:
            return
        written = torch.cat([history, real], dim=1)
        if cache_layer.get_seq_length() != written.shape[1]:
            raise RuntimeError(
                f"routing: routed layer {self.index} expected its cache to hold "
                f"{written.shape[1]} entries, found {cache_layer.get_seq_length()}"
            )
        self.written[cache_layer] = (written, weakref.ref(cache_layer.keys))

    def _record(self, context: RoutingContext, selected: int, hidden: torch.Tensor) -> None:
        """Stats: this layer processed ``selected`` tokens of the flattened batch."""
        stats = context.stats
        if stats is None:  # a context built by hand
            return
        other = context.frame_ids.numel() - context.video_tokens
        video_after = selected - other
        stats.video_tokens_after[self.position] = video_after
        skipped = context.video_tokens - video_after
        if not self.linear:  # a linear-attention layer holds no KV whatever it processes
            per_token = 2 * self.kv_heads * self.head_dim * hidden.element_size()
            stats.kv_cache_bytes_saved += skipped * per_token
        stats.expert_assignments_skipped += skipped * self.experts_per_token


def _cache_layer(cache, index: int):
    """The cache's layer ``index`` if it exists yet; a kind routed layers cannot mask raises."""
    if cache is None or index >= len(getattr(cache, "layers", ())):
        if cache is not None and not hasattr(cache, "layers"):
            raise NotImplementedError(
                f"routing: unsupported cache type {type(cache).__name__} (use DynamicCache)"
            )
        return None
    layer = cache.layers[index]
    if not isinstance(layer, DynamicLayer) or layer.is_sliding:
        raise NotImplementedError(
            f"routing: routed layers need a dynamic, non-sliding cache layer, got "
            f"{type(layer).__name__} (use DynamicCache)"
        )
    return layer


def _to_layout(value, layout: CompactedLayout, length: int):
    """A per-token input moved to the layout: ``[B or 1, L, ...]`` (position ids, cos / sin), or
    with a leading M-RoPE axis ``[3 or 4, B or 1, L, ...]`` (position ids; cos / sin on releases
    that apply the M-RoPE sections inside attention); tuples element-wise; anything else
    unchanged."""
    if isinstance(value, tuple):
        return tuple(_to_layout(item, layout, length) for item in value)
    batch = layout.source_column.shape[0]
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return value
    if value.shape[0] in (1, batch) and value.shape[1] == length:
        return layout.gather(value.expand(batch, *value.shape[1:]), 1)
    if value.dim() >= 3 and value.shape[1] in (1, batch) and value.shape[2] == length:
        sections = value.expand(value.shape[0], batch, *value.shape[2:])
        return torch.stack([layout.gather(section, 1) for section in sections])
    return value


def _additive_mask(history: torch.Tensor, real: torch.Tensor, dtype) -> torch.Tensor:
    """float ``[B, 1, L, held + L]`` of 0 (attend) / finfo(dtype).min: every real entry the layer
    wrote before, and the real new tokens up to and including the query (causal). Each query
    sees at least itself, so no row is fully masked."""
    batch, length = real.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    new = (real[:, None, :] & causal) | torch.eye(length, dtype=torch.bool, device=real.device)
    allowed = torch.cat([history[:, None, :].expand(batch, length, -1), new], dim=2)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=real.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
