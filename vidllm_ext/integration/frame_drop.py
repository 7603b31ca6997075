"""Which video tokens of a batch survive frame-difference token drop (model-agnostic)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vidllm_ext import ops
from vidllm_ext.contracts.frame_drop import DTDConfig
from vidllm_ext.integration.sequence import VideoSegment, VideoTokenStats


@dataclass
class DTDStats(VideoTokenStats):
    """What frame-difference token drop did in the last forward that held video.

    Attributes:
        video_tokens_before: video tokens in the batch before dropping.
        video_tokens_after: video tokens kept.
        step_drop_ratios: per video (batch order, then sequence order), float32 ``[steps]``: the
            fraction of each temporal step's tokens that was dropped (0 for the first step).
        samples: the batch row of each entry of ``step_drop_ratios``.
    """

    step_drop_ratios: list = field(default_factory=list)

    @property
    def drop_ratio(self) -> float:
        """Fraction of all video tokens dropped."""
        return self.removed_fraction


def drop_video_tokens(
    embeds: torch.Tensor, segments: list[VideoSegment], config: DTDConfig
) -> tuple[torch.Tensor, DTDStats]:
    """bool ``[batch, length]``: False on the video tokens that DTD drops, True elsewhere.

    embeds: ``[batch, length, dim]`` LLM input embeddings (the features of the feature method).
    """
    keep = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    kept_per_step = []  # on the device until one transfer at the end
    for segment in segments:
        if config.method == "feature":
            frames = embeds[segment.sample, segment.columns.to(embeds.device)]
            frames = frames.reshape(segment.steps, segment.tokens, -1)
        else:
            frames = segment.pixels.to(embeds.device)
        previous = None if segment.previous is None else segment.previous.to(frames)
        segment_keep = ops.dtd_keep_mask(
            frames, config.threshold, method=config.method, mode=config.mode, prev=previous
        )
        segment.frames = frames
        keep[segment.sample, segment.columns.to(embeds.device)] = segment_keep.flatten()
        kept_per_step.append(segment_keep.sum(1))
    stats = DTDStats(samples=[segment.sample for segment in segments])
    if segments:
        kept = torch.cat(kept_per_step).cpu().split([s.steps for s in segments])
        for segment, segment_kept in zip(segments, kept):
            stats.video_tokens_before += segment.steps * segment.tokens
            stats.video_tokens_after += int(segment_kept.sum())
            ratio = 1.0 - segment_kept.float() / max(segment.tokens, 1)
            stats.step_drop_ratios.append(ratio)
    return keep, stats


def scene_changes(step_drop_ratios: list[float], top_fraction: float = 0.1) -> list[int]:
    """The steps with the lowest drop ratio (the most new content), ascending: TimeChat-Online's
    trigger for proactive answers. Step 0, which has nothing to compare with, is left out."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction: expected a fraction in (0, 1], got {top_fraction}")
    ratios = list(step_drop_ratios)[1:]
    if not ratios:
        return []
    count = max(1, math.ceil(top_fraction * len(ratios)))
    order = sorted(range(len(ratios)), key=lambda step: (ratios[step], step))
    return sorted(step + 1 for step in order[:count])
