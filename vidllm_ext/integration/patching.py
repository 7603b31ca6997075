"""patch / unpatch / last_stats: per-instance hooks between the vision tower and the decoder.

Hooks on submodules of the patched instance only:
- on the multimodal model (the module that receives input_ids and pixel inputs), a pre-hook
  records what the language model cannot see (token ids, video grids, pixels) for this call;
  its get_video_features is wrapped (an instance attribute) to record the grids and pixels too,
  because generate encodes videos before the forward and passes only the features;
- on the language model (the decoder stack fed inputs_embeds), a pre-hook drops redundant video
  tokens from a prefill and rewrites embeddings, position ids, side inputs and the attention mask to
  the shortened layout; on later decode steps it maps generate's growing mask onto that layout.
Kept tokens keep their original position ids, so every later token's position is unchanged too.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import torch

from vidllm_ext.integration.attention import AttentionImplementation
from vidllm_ext.integration.compat import cache_from, warn_if_untested
from vidllm_ext.integration.config import DTDConfig, MergeConfig, MoDConfig
from vidllm_ext.integration.kv import (
    default_packed_cache,
    mark_salient_tokens,
    require_packed_cache,
)
from vidllm_ext.integration.registry import adapter_for
from vidllm_ext.integration.routed_layers import existing_routers, install_routing
from vidllm_ext.integration.sequence import CompactedLayout, require_video_layout
from vidllm_ext.integration.token_drop import DTDStats, drop_video_tokens
from vidllm_ext.integration.token_merge import MergeStats, merge_video_tokens
from vidllm_ext.kv_config import KVQuantConfig

STATE_ATTRIBUTE = "_vidllm_patch"
TECHNIQUES = ("dtd", "merge", "mod")


@dataclass
class PatchState:
    adapter: object
    dtd: DTDConfig | None
    merge: MergeConfig | None = None
    mod: MoDConfig | None = None
    handles: list = field(default_factory=list)
    captured: dict | None = None  # the multimodal model's inputs during its forward
    encoded_videos: dict | None = None  # get_video_features' inputs, until a prefill uses them
    layout: CompactedLayout | None = None  # the last dropped prefill, for its decode steps
    cache: object = None  # weak reference to the cache that prefill filled
    stats: DTDStats | None = None
    merge_stats: MergeStats | None = None
    mod_stats: object = None  # RoutingStats of the last forward through the routed layers
    stream: StreamStep | None = None  # set by a StreamingSession around each chunk's forward
    kv: KVQuantConfig | None = None
    call_layout: CompactedLayout | None = None  # the layout DTD gave the current forward


class NothingKept(Exception):
    """Raised into a StreamingSession when DTD drops every token of a chunk: there is nothing to
    prefill, and the cache stays as it is."""


@dataclass
class StreamStep:
    """One chunk of a live stream: drop against the previous chunk's last step, in a cache that
    already holds the stream so far (batch of one, no padding)."""

    previous: torch.Tensor | None = None  # [tokens, dim] features of the last step seen
    last_step: torch.Tensor | None = None  # set by the hook: this chunk's last step


def patch(model, *, dtd=None, merge=None, mod=None, kv=None):
    """Patches a HuggingFace video LLM instance in place and returns it.

    Args:
        model: a loaded ``*ForConditionalGeneration`` of a supported family
            (``vidllm_ext.integration.supported_model_types()``: qwen2_vl, qwen2_5_vl, qwen3_vl,
            qwen3_vl_moe, qwen3_5, qwen3_5_moe, llava_onevision); other instances and
            transformers' classes are never touched.
        dtd: :class:`DTDConfig` to drop redundant video tokens before the first decoder layer, or
            None.
        merge: :class:`MergeConfig` to merge each video's tokens segment by segment (after DTD
            when both are on) before the first decoder layer, or None.
        mod: :class:`MoDConfig` to route video tokens around the routed decoder layers with
            learned routers (their weights join ``model.state_dict()``), or None. Patching again
            with ``mod`` keeps the routers of layers that stay routed (same parameters);
            :func:`unpatch` removes them.
        kv: :class:`KVQuantConfig`: ``generate`` (and :class:`StreamingSession`) use a
            :class:`PackedKVCache` with it unless given ``past_key_values``, and the decoder's
            attention reads the packed codes directly (``ops.packed_attention``; a caller's
            PackedKVCache is switched to it too); with ``salient_ratio`` > 0 the prompt's most
            text-relevant video tokens keep 2-bit values.

    Patching twice replaces the configuration; with every technique off the model computes
    exactly what it did unpatched.

    Example:
        >>> model = vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold=0.5))
        >>> out = model.generate(**inputs, max_new_tokens=32)
        >>> vidllm_ext.last_stats(model).drop_ratio
    """
    for name, value, kind in (
        ("dtd", dtd, DTDConfig),
        ("merge", merge, MergeConfig),
        ("mod", mod, MoDConfig),
        ("kv", kv, KVQuantConfig),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"{name}: expected a vidllm_ext.{kind.__name__} or None, got {type(value).__name__}"
            )
    adapter = adapter_for(model)
    warn_if_untested()
    if merge is not None:
        _check_merge_fits(merge, adapter)
    routers = existing_routers(adapter.language_model)  # trained routers survive re-patching
    unpatch(model)
    state = PatchState(adapter=adapter, dtd=dtd, merge=merge, mod=mod, kv=kv)
    shortens = dtd is not None or merge is not None
    salient = kv is not None and kv.salient_ratio > 0
    if shortens or salient or mod is not None:
        state.handles += [
            adapter.multimodal.register_forward_pre_hook(
                lambda module, args, kwargs: _capture(state, args, kwargs), with_kwargs=True
            ),
            adapter.multimodal.register_forward_hook(
                lambda module, args, kwargs, output: _release(state),
                with_kwargs=True,
                always_call=True,
            ),
        ]
    if shortens or mod is not None:  # they need the video grids of a generate call
        state.handles.append(_wrap_video_encoder(state, adapter.multimodal))
    if shortens:
        state.handles.append(
            adapter.language_model.register_forward_pre_hook(
                lambda module, args, kwargs: _before_decoder(state, args, kwargs),
                with_kwargs=True,
            )
        )
    if kv is not None:
        state.handles.append(
            adapter.language_model.register_forward_pre_hook(
                lambda module, args, kwargs: require_packed_cache(state, module, args, kwargs),
                with_kwargs=True,
            )
        )
    if salient:  # after DTD's hook: it sees the tokens DTD kept
        state.handles.append(
            adapter.language_model.register_forward_pre_hook(
                lambda module, args, kwargs: mark_salient_tokens(state, kwargs), with_kwargs=True
            )
        )
    if mod is not None:  # after DTD's and merging's hooks: routes the tokens they kept
        try:
            state.handles += install_routing(state, model, routers)
        except Exception:  # a configuration routing rejects: undo the hooks above
            for handle in state.handles:
                handle.remove()
            raise
    if kv is not None:
        state.handles += [
            _InstanceAttribute(model, "generate", default_packed_cache(model, kv)),
            AttentionImplementation(adapter.language_model.config),
        ]
    setattr(model, STATE_ATTRIBUTE, state)
    return model


def _check_merge_fits(merge: MergeConfig, adapter) -> None:
    hidden = adapter.language_model.config.hidden_size
    if hidden % merge.metric_chunks:
        raise ValueError(
            f"merge.metric_chunks: {merge.metric_chunks} does not divide the language model's "
            f"hidden size {hidden}"
        )


def unpatch(model):
    """Removes every hook :func:`patch` added; the instance is exactly as before. Returns it."""
    state = getattr(model, STATE_ATTRIBUTE, None)
    if state is not None:
        for handle in state.handles:
            handle.remove()
        delattr(model, STATE_ATTRIBUTE)
    return model


def last_stats(model, technique: str = "dtd"):
    """What one technique did in the last forward that used it (None before any).

    Args:
        technique: ``"dtd"`` (:class:`DTDStats`), ``"merge"`` (:class:`MergeStats`) or ``"mod"``
            (:class:`RoutingStats`); each reports the video tokens before and after it.

    Example:
        >>> stats = vidllm_ext.last_stats(model)
        >>> stats.video_tokens_before, stats.video_tokens_after, stats.step_drop_ratios[0]
        >>> vidllm_ext.last_stats(model, "merge").video_tokens_after
    """
    state = getattr(model, STATE_ATTRIBUTE, None)
    if state is None:
        raise ValueError("last_stats: the model is not patched (call vidllm_ext.patch first)")
    if technique not in TECHNIQUES:
        raise ValueError(f"technique: expected one of {', '.join(TECHNIQUES)}, got {technique!r}")
    return {"dtd": state.stats, "merge": state.merge_stats, "mod": state.mod_stats}[technique]


class _InstanceAttribute:
    """A removable handle for a method overridden on one instance."""

    def __init__(self, owner, name: str, value):
        self.owner, self.name = owner, name
        setattr(owner, name, value)

    def remove(self) -> None:
        if self.name in vars(self.owner):
            delattr(self.owner, self.name)


def _wrap_video_encoder(state: PatchState, multimodal) -> _InstanceAttribute:
    original = multimodal.get_video_features

    @functools.wraps(original)  # generate reads the signature to choose the arguments
    def get_video_features(*args, **kwargs):
        state.encoded_videos = state.adapter.video_encoder_inputs(args, kwargs)
        return original(*args, **kwargs)

    return _InstanceAttribute(multimodal, "get_video_features", get_video_features)


def _capture(state: PatchState, args, kwargs) -> None:
    state.call_layout = None
    captured = state.adapter.capture(args, kwargs)
    for key, value in (state.encoded_videos or {}).items():
        if captured.get(key) is None:
            captured[key] = value
    state.captured = captured


def _release(state: PatchState) -> None:
    state.captured = None
    state.call_layout = None


def _before_decoder(state: PatchState, args, kwargs):
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    cache = cache_from(kwargs)
    if state.stream is not None:
        return _shorten_stream_chunk(state, args, kwargs, embeds)
    if cache is None or cache.get_seq_length() == 0:
        state.layout = None
        return _shorten_prefill(state, args, kwargs, embeds, cache)
    if state.layout is not None and state.cache is not None and state.cache() is cache:
        mask = kwargs.get("attention_mask")
        if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            kv_length = cache.get_seq_length() + embeds.shape[1]
            kwargs["attention_mask"] = state.layout.decode_mask(mask, kv_length).to(embeds.device)
        return args, kwargs
    return None


def _take_segments(state: PatchState) -> list:
    """The videos of the call being prefilled; the recorded encoder inputs are used up."""
    captured, state.encoded_videos = state.captured, None
    method = state.dtd.method if state.dtd is not None else "feature"
    segments = state.adapter.video_segments(captured, method) if captured else []
    technique = "dtd" if state.dtd is not None else "merge"
    require_video_layout(
        technique, (captured or {}).get("input_ids"), state.adapter.video_token_id, segments
    )
    return segments


def _shorten(state: PatchState, embeds: torch.Tensor, segments: list, previous=None):
    """DTD, then merging: ``(embeds, keep)`` with merged features written at the columns of
    their representatives and keep False on every video token that does not reach the decoder."""
    keep = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    if state.dtd is not None:
        if previous is not None:
            segments[0].previous = previous
        keep, state.stats = drop_video_tokens(embeds, segments, state.dtd)
    if state.merge is not None:
        embeds, keep, state.merge_stats = merge_video_tokens(embeds, segments, keep, state.merge)
    return embeds, keep


def _rewrite_to_layout(state: PatchState, kwargs: dict, embeds, keep, position_ids):
    """Moves the decoder's inputs to the compacted layout of `keep`; returns the layout."""
    layout = CompactedLayout.from_keep(keep)
    if position_ids is None:
        position_ids = state.adapter.default_position_ids(embeds)
    kwargs["inputs_embeds"] = layout.gather(embeds, 1)
    kwargs["position_ids"] = _compact_positions(position_ids, layout)
    state.adapter.compact_side_inputs(kwargs, keep, layout)
    state.call_layout = layout
    return layout


def _shorten_prefill(state: PatchState, args, kwargs, embeds, cache):
    segments = _take_segments(state)
    if not segments:
        return None
    mask = kwargs.get("attention_mask")
    if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        raise NotImplementedError(
            "DTD and merging need a 2-D attention mask (or none); 4-D masks and static caches "
            "are not supported yet"
        )
    embeds, keep = _shorten(state, embeds, segments)
    if mask is not None:
        keep &= mask.to(keep.device).bool()
    layout = _rewrite_to_layout(state, kwargs, embeds, keep, kwargs.get("position_ids"))
    kwargs["attention_mask"] = layout.attention_mask.to(
        device=embeds.device, dtype=mask.dtype if mask is not None else torch.long
    )
    state.layout = layout
    state.cache = weakref.ref(cache) if cache is not None else None
    return args, kwargs


def _shorten_stream_chunk(state: PatchState, args, kwargs, embeds):
    segments = _take_segments(state)
    if not segments:
        return None
    if len(segments) != 1 or embeds.shape[0] != 1:
        raise ValueError("a stream chunk holds exactly one video of one sample")
    embeds, keep = _shorten(state, embeds, segments, state.stream.previous)
    if state.dtd is not None:
        state.stream.last_step = segments[0].frames[-1].detach().clone()
    if not keep.any():
        raise NothingKept
    _rewrite_to_layout(state, kwargs, embeds, keep, kwargs["position_ids"])
    kwargs["attention_mask"] = None  # one unpadded sample: causal over the cache and the chunk
    return args, kwargs


def _compact_positions(position_ids: torch.Tensor, layout: CompactedLayout) -> torch.Tensor:
    """Kept tokens keep their ids. A leading text-position row (Qwen's 4-row form) is renumbered
    contiguously: it only marks sequence boundaries, and gaps would read as packed sequences."""
    if position_ids.dim() == 2:
        return layout.gather(position_ids.expand(layout.source_column.shape[0], -1), 1)
    positions = layout.gather(position_ids.expand(-1, layout.source_column.shape[0], -1), 2)
    if positions.shape[0] == 4:
        mask = layout.attention_mask.to(positions.device)
        positions[0] = (mask.cumsum(-1) - 1).clamp_min(0)
    return positions
