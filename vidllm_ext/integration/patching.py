"""patch / unpatch / last_stats: per-instance hooks between the vision tower and the decoder.

Hooks on submodules of the patched instance only:
- on the multimodal model (the module that receives input_ids and pixel inputs), a pre-hook
  records what the language model cannot see (token ids, video grids, pixels) for this call in
  :class:`ForwardInputs`; its get_video_features is wrapped (an instance attribute) to record the
  grids and pixels too, because generate encodes videos before the forward and passes only the
  features;
- on the language model (the decoder stack fed inputs_embeds), one pre-hook runs the decoder
  stages of :class:`Patch` in the order :meth:`Patch.decoder_stages` states: the video-token
  stages (frame drop, then token merging) shorten a prefill and rewrite embeddings, position ids,
  side inputs and the attention mask to the shortened layout (on later decode steps they map
  generate's growing mask onto it); then the packed KV cache is required and its salient tokens
  marked; then routing builds the forward's routing context from the shortened layout.
Kept tokens keep their original position ids, so every later token's position is unchanged too.

Each technique keeps its own state (:class:`FrameDropState`, :class:`TokenMergeState`,
:class:`RoutingState`, :class:`KVQuantState`); what one forward hands from stage to stage is its
:class:`ForwardInputs`. A :class:`~vidllm_ext.StreamingSession` feeds a chunk through
:meth:`Patch.stream_chunk`.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field

import torch

from vidllm_ext.contracts.frame_drop import DTDConfig
from vidllm_ext.contracts.kv_quant import KVQuantConfig
from vidllm_ext.contracts.routing import MoDConfig
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration.compat import cache_from, warn_if_untested
from vidllm_ext.integration.frame_drop import DTDStats, drop_video_tokens
from vidllm_ext.integration.kv_attention import AttentionImplementation
from vidllm_ext.integration.kv_quant import (
    default_packed_cache,
    mark_salient_tokens,
    require_packed_cache,
)
from vidllm_ext.integration.registry import adapter_for
from vidllm_ext.integration.routing_context import RoutingStats
from vidllm_ext.integration.routing_layers import existing_routers, install_routing
from vidllm_ext.integration.sequence import CompactedLayout, require_video_layout
from vidllm_ext.integration.token_merge import MergeStats, merge_video_tokens

STATE_ATTRIBUTE = "_vidllm_patch"
TECHNIQUES = ("dtd", "merge", "mod")


@dataclass
class ForwardInputs:
    """What the current multimodal forward hands its decoder stages besides the decoder's own
    arguments: filled by the multimodal hooks, read by the stages, cleared after the forward."""

    captured: dict | None = None  # the multimodal model's inputs during its forward
    encoded_videos: dict | None = None  # get_video_features' inputs, until a prefill uses them
    layout: CompactedLayout | None = None  # the layout the video-token stages gave this forward

    def take_videos(self) -> dict | None:
        """The captured inputs, with the recorded encoder inputs used up."""
        self.encoded_videos = None
        return self.captured


@dataclass
class FrameDropState:
    config: DTDConfig
    stats: DTDStats | None = None  # the last forward that held video


@dataclass
class TokenMergeState:
    config: MergeConfig
    stats: MergeStats | None = None


@dataclass
class RoutingState:
    config: MoDConfig
    stats: RoutingStats | None = None  # the last forward through the routed layers


@dataclass
class KVQuantState:
    config: KVQuantConfig

    @property
    def salient(self) -> bool:
        return self.config.salient_ratio > 0


@dataclass
class PrefillLayout:
    """The layout of the last shortened prefill, for the decode steps that extend its cache."""

    layout: CompactedLayout | None = None
    cache: object = None  # weak reference to the cache that prefill filled

    def belongs_to(self, cache) -> bool:
        return self.layout is not None and self.cache is not None and self.cache() is cache


class NothingKept(Exception):
    """Raised into a StreamingSession when DTD drops every token of a chunk: there is nothing to
    prefill, and the cache stays as it is."""


@dataclass
class StreamStep:
    """One chunk of a live stream: drop against the previous chunk's last step, in a cache that
    already holds the stream so far (batch of one, no padding)."""

    previous: torch.Tensor | None = None  # [tokens, dim] features of the last step seen
    last_step: torch.Tensor | None = None  # set by the frame-drop stage: this chunk's last step


@dataclass
class Patch:
    """One patched model: the family adapter, each technique's state, and the hooks."""

    adapter: object
    frame_drop: FrameDropState | None = None
    token_merge: TokenMergeState | None = None
    routing: RoutingState | None = None
    kv_quant: KVQuantState | None = None
    forward: ForwardInputs = field(default_factory=ForwardInputs)
    prefill: PrefillLayout = field(default_factory=PrefillLayout)
    stream: StreamStep | None = None  # during a StreamingSession chunk's forward
    handles: list = field(default_factory=list)
    routing_stage: object = None  # routing's decoder stage (installed with the routed layers)

    @property
    def shortens(self) -> bool:
        """Whether a video-token stage (frame drop or token merging) is on."""
        return self.frame_drop is not None or self.token_merge is not None

    def config(self, technique: str):
        """The configuration of ``"dtd"``, ``"merge"``, ``"mod"`` or ``"kv"``, or None."""
        state = self._state(technique)
        return state.config if state is not None else None

    def stats(self, technique: str):
        state = self._state(technique)
        return state.stats if state is not None else None

    def _state(self, technique: str):
        return {
            "dtd": self.frame_drop,
            "merge": self.token_merge,
            "mod": self.routing,
            "kv": self.kv_quant,
        }[technique]

    def decoder_stages(self) -> list:
        """The language model's pre-forward stages, in the order they must run: the video-token
        stages first (frame drop, then merging, in :func:`_shorten`), so that the KV stages see
        the tokens that were kept and routing routes them."""
        stages = []
        if self.shortens:
            stages.append(functools.partial(_shorten_video_tokens, self))
        if self.kv_quant is not None:
            stages.append(functools.partial(require_packed_cache, self.kv_quant.config))
            if self.kv_quant.salient:
                stages.append(functools.partial(_mark_salient_tokens, self))
        if self.routing_stage is not None:
            stages.append(self.routing_stage)
        return stages

    @contextlib.contextmanager
    def stream_chunk(self, previous: torch.Tensor | None):
        """Context of one StreamingSession chunk's forward: frame drop compares its first step
        with ``previous``. Yields the :class:`StreamStep` (``last_step`` is set after the forward
        when frame drop is on), or None when no video-token stage is on."""
        self.stream = StreamStep(previous=previous) if self.shortens else None
        try:
            yield self.stream
        finally:
            self.stream = None


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
    state = Patch(
        adapter=adapter,
        frame_drop=FrameDropState(dtd) if dtd is not None else None,
        token_merge=TokenMergeState(merge) if merge is not None else None,
        routing=RoutingState(mod) if mod is not None else None,
        kv_quant=KVQuantState(kv) if kv is not None else None,
    )
    salient = state.kv_quant is not None and state.kv_quant.salient
    try:
        if state.shortens or salient or mod is not None:  # they read the multimodal call
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
        if state.shortens or mod is not None:  # they need the video grids of a generate call
            state.handles.append(_wrap_video_encoder(state, adapter.multimodal))
        if mod is not None:
            state.routing_stage, routed_layers = install_routing(
                adapter, state.forward, state.routing, model, routers, kv=kv
            )
            state.handles += routed_layers
        stages = state.decoder_stages()
        if stages:
            state.handles.append(
                adapter.language_model.register_forward_pre_hook(
                    functools.partial(_run_stages, stages), with_kwargs=True
                )
            )
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


def _run_stages(stages: list, module, args, kwargs):
    """The language model's one pre-hook: each stage sees what the stages before it returned."""
    changed = False
    for stage in stages:
        result = stage(module, args, kwargs)
        if result is not None:
            args, kwargs = result
            changed = True
    return (args, kwargs) if changed else None


def patch_of(model) -> Patch | None:
    """The :class:`Patch` of a patched model, or None."""
    return getattr(model, STATE_ATTRIBUTE, None)


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
    return state.stats(technique)


class _InstanceAttribute:
    """A removable handle for a method overridden on one instance."""

    def __init__(self, owner, name: str, value):
        self.owner, self.name = owner, name
        setattr(owner, name, value)

    def remove(self) -> None:
        if self.name in vars(self.owner):
            delattr(self.owner, self.name)


def _wrap_video_encoder(state: Patch, multimodal) -> _InstanceAttribute:
    original = multimodal.get_video_features

    @functools.wraps(original)  # generate reads the signature to choose the arguments
    def get_video_features(*args, **kwargs):
        state.forward.encoded_videos = state.adapter.video_encoder_inputs(args, kwargs)
        return original(*args, **kwargs)

    return _InstanceAttribute(multimodal, "get_video_features", get_video_features)


def _capture(state: Patch, args, kwargs) -> None:
    forward = state.forward
    forward.layout = None
    captured = state.adapter.capture(args, kwargs)
    for key, value in (forward.encoded_videos or {}).items():
        if captured.get(key) is None:
            captured[key] = value
    forward.captured = captured


def _release(state: Patch) -> None:
    state.forward.captured = None
    state.forward.layout = None


def _mark_salient_tokens(state: Patch, module, args, kwargs) -> None:
    mark_salient_tokens(state.adapter, state.forward, kwargs)


def _shorten_video_tokens(state: Patch, module, args, kwargs):
    """The video-token stages of the decoder pre-hook (frame drop, then merging)."""
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    cache = cache_from(kwargs)
    if state.stream is not None:
        return _shorten_stream_chunk(state, args, kwargs, embeds)
    if cache is None or cache.get_seq_length() == 0:
        state.prefill = PrefillLayout()
        return _shorten_prefill(state, args, kwargs, embeds, cache)
    if state.prefill.belongs_to(cache):
        mask = kwargs.get("attention_mask")
        if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            kv_length = cache.get_seq_length() + embeds.shape[1]
            layout = state.prefill.layout
            kwargs["attention_mask"] = layout.decode_mask(mask, kv_length).to(embeds.device)
        return args, kwargs
    return None


def _take_segments(state: Patch) -> list:
    """The videos of the call being prefilled; the recorded encoder inputs are used up."""
    captured = state.forward.take_videos()
    method = state.frame_drop.config.method if state.frame_drop is not None else "feature"
    segments = state.adapter.video_segments(captured, method) if captured else []
    technique = "dtd" if state.frame_drop is not None else "merge"
    require_video_layout(
        technique, (captured or {}).get("input_ids"), state.adapter.video_token_id, segments
    )
    return segments


def _shorten(state: Patch, embeds: torch.Tensor, segments: list, previous=None):
    """Frame drop, then merging: ``(embeds, keep)`` with merged features written at the columns
    of their representatives and keep False on every video token that does not reach the
    decoder."""
    keep = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    if state.frame_drop is not None:
        if previous is not None:
            segments[0].previous = previous
        keep, state.frame_drop.stats = drop_video_tokens(embeds, segments, state.frame_drop.config)
    if state.token_merge is not None:
        merge = state.token_merge
        embeds, keep, merge.stats = merge_video_tokens(embeds, segments, keep, merge.config)
    return embeds, keep


def _rewrite_to_layout(state: Patch, kwargs: dict, embeds, keep, position_ids):
    """Moves the decoder's inputs to the compacted layout of `keep`; returns the layout."""
    layout = CompactedLayout.from_keep(keep)
    if position_ids is None:
        position_ids = state.adapter.default_position_ids(embeds)
    kwargs["inputs_embeds"] = layout.gather(embeds, 1)
    kwargs["position_ids"] = _compact_positions(position_ids, layout)
    state.adapter.compact_side_inputs(kwargs, keep, layout)
    state.forward.layout = layout
    return layout


def _shorten_prefill(state: Patch, args, kwargs, embeds, cache):
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
    state.prefill = PrefillLayout(layout, weakref.ref(cache) if cache is not None else None)
    return args, kwargs


def _shorten_stream_chunk(state: Patch, args, kwargs, embeds):
    segments = _take_segments(state)
    if not segments:
        return None
    if len(segments) != 1 or embeds.shape[0] != 1:
        raise ValueError("a stream chunk holds exactly one video of one sample")
    embeds, keep = _shorten(state, embeds, segments, state.stream.previous)
    if state.frame_drop is not None:
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
