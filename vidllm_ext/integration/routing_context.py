"""What the routed decoder layers of one patched model share during a forward.

A language-model forward pre-hook turns the current call's token ids and video grids (recorded by
the multimodal capture hooks) into a :class:`RoutingContext`: which video temporal step each input
token belongs to, and which tokens are real (not left padding). Every routed layer of that forward
reads it. A call without video tokens (a decode step, text alone) routes nothing: every token goes
through every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidllm_ext.integration.sequence import require_video_layout

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class RoutingStats:
    """What layer-skip routing did in the last forward that held video tokens.

    Attributes:
        routed_layers: the routed decoder layer indices, ascending.
        video_tokens_before: video tokens entering each routed layer (after DTD / merging).
        video_tokens_after: per routed layer (``routed_layers`` order), the video tokens it
            processed (the rest skipped it).
        kv_cache_bytes_saved: key and value bytes the routed layers did not write to a KV cache
            (skipped video tokens x 2 x kv heads x head dim x element size, summed over the
            routed layers). A padded batch stores its rows at the longest row's length, so its
            dense cache may save less. Linear-attention layers (hybrid decoders) hold no KV and
            add nothing.
        expert_assignments_skipped: token-to-expert assignments the routed sparse-MoE layers did
            not compute (skipped video tokens x experts per token, summed over those layers);
            0 for dense decoders.
    """

    routed_layers: tuple[int, ...] = ()
    video_tokens_before: int = 0
    video_tokens_after: list[int] = field(default_factory=list)
    kv_cache_bytes_saved: int = 0
    expert_assignments_skipped: int = 0


@dataclass
class RoutingContext:
    """The routing inputs of one language-model forward over ``[batch, length]`` new tokens.

    Attributes:
        frame_ids: int64 ``[batch, length]``: -1 on every token that is not a video token (text,
            images, padding), else a batch-unique id of its (video, temporal step).
        real: bool ``[batch, length]``: False on left padding.
        video_tokens: how many entries of frame_ids are >= 0.
        segment_offsets: int64 ``[segments + 1]``: the temporal steps as runs of the video tokens
            of the flattened batch (row-major), the form ``ops.routed_update`` takes.
        stats: where the routed layers record what they did (None without video).
    """

    frame_ids: torch.Tensor
    real: torch.Tensor
    video_tokens: int
    segment_offsets: torch.Tensor
    stats: RoutingStats | None = None

    @staticmethod
    def build(frame_ids: torch.Tensor, real: torch.Tensor, stats=None) -> RoutingContext:
        """frame_ids int64 ``[B, L]`` (-1: not video; the tokens of one step consecutive among
        the video tokens), real bool ``[B, L]``. Padding is never routed."""
        frame_ids = torch.where(real, frame_ids, -1)
        video_frames = frame_ids.flatten()[frame_ids.flatten() >= 0]
        starts = (video_frames[1:] != video_frames[:-1]).nonzero().flatten() + 1
        zero = starts.new_zeros(1)
        count = starts.new_full((1,), video_frames.numel())
        offsets = torch.cat([zero, starts, count]) if video_frames.numel() else zero
        return RoutingContext(frame_ids, real, video_frames.numel(), offsets, stats)

    @property
    def is_video(self) -> torch.Tensor:
        """bool ``[B * L]``, row-major: the tokens the routers score."""
        return self.frame_ids.flatten() >= 0


def video_frame_ids(adapter, forward, batch: int, length: int, device) -> torch.Tensor:
    """int64 ``[batch, length]`` frame ids of the language model's current input (see
    :class:`RoutingContext`), from the multimodal call's recorded ids and video grids, mapped
    through the layout DTD / merging gave the call. The recorded encoder inputs are used up."""
    captured = forward.take_videos()
    frame_ids = torch.full((batch, length), -1, dtype=torch.long, device=device)
    input_ids = (captured or {}).get("input_ids")
    if input_ids is None or not bool((input_ids == adapter.video_token_id).any()):
        return frame_ids
    original = torch.full(input_ids.shape, -1, dtype=torch.long, device=input_ids.device)
    first_id = 0
    segments = adapter.video_segments(captured, "feature")
    require_video_layout("mod", input_ids, adapter.video_token_id, segments)
    for segment in segments:
        steps = torch.arange(segment.steps, device=input_ids.device) + first_id
        columns = segment.columns.to(input_ids.device)
        original[segment.sample, columns] = steps.repeat_interleave(segment.tokens)
        first_id += segment.steps
    layout = forward.layout
    if layout is not None:
        original = layout.gather(original, 1)
        original = original.masked_fill(layout.attention_mask.to(original.device) == 0, -1)
    if tuple(original.shape) != (batch, length):
        raise ValueError(
            f"routing: the multimodal call's {tuple(original.shape)} token ids do not match the "
            f"language model's input {(batch, length)}"
        )
    return original.to(device)


def new_token_mask(attention_mask, batch: int, length: int, device) -> torch.Tensor:
    """bool ``[batch, length]``: which of the forward's new tokens are real, from the language
    model's 2-D attention mask over cache + new tokens (None: all)."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise NotImplementedError(
            "routing (mod=) needs a 2-D attention mask [batch, cache + new tokens] or none; 4-D "
            "masks, mask dictionaries and static caches are not supported"
        )
    return attention_mask[:, -length:].to(device=device, dtype=torch.bool)


class RoutingRuntime:
    """The routing state of one patch: its configuration and the current forward's context."""

    def __init__(self, adapter, forward, state, routed_layers: tuple[int, ...], text_config):
        self.adapter, self.forward, self.state = adapter, forward, state
        self.config = state.config
        self.routed_layers = routed_layers
        self.text_config = text_config
        self.context: RoutingContext | None = None

    def before_decoder(self, module, args, kwargs) -> None:
        """Language-model forward pre-hook: builds this forward's :class:`RoutingContext`."""
        check_attention_implementation(self.text_config)
        tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            raise ValueError("routing: the language model got neither inputs_embeds nor input_ids")
        batch, length = tokens.shape[:2]
        real = new_token_mask(kwargs.get("attention_mask"), batch, length, tokens.device)
        frame_ids = video_frame_ids(self.adapter, self.forward, batch, length, tokens.device)
        self.context = RoutingContext.build(frame_ids, real)
        if self.context.video_tokens:
            layers = self.routed_layers
            self.context.stats = RoutingStats(
                layers, self.context.video_tokens, [0] * len(layers), 0
            )
            self.state.stats = self.context.stats

    def context_for(self, hidden_states: torch.Tensor) -> RoutingContext:
        """The current context; it must describe ``hidden_states`` ``[B, L, D]``."""
        context = self.context
        if context is None:
            raise RuntimeError(
                "routing: a routed decoder layer ran outside its language model's forward (no "
                "routing context); call the language model or the whole model"
            )
        if tuple(context.frame_ids.shape) != tuple(hidden_states.shape[:2]):
            raise RuntimeError(
                f"routing: the layer's input {tuple(hidden_states.shape[:2])} does not match the "
                f"language model's input {tuple(context.frame_ids.shape)}"
            )
        return context


def check_attention_implementation(text_config) -> None:
    implementation = text_config._attn_implementation
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise NotImplementedError(
            f"routing (mod=) supports attn_implementation 'sdpa' and 'eager', got "
            f"{implementation!r}: routed layers build their own additive masks"
        )
