"""Hierarchical merging of a batch's video tokens before the decoder (LongVLM; model-agnostic).

Every video is cut into segments of ``frames_per_segment`` temporal steps; the tokens of a segment
that reach the merge (all of them, or those DTD kept) are merged down to ``tokens_per_segment``.
A merged token is written at the column of its representative (the destination that survived
every round), so the compaction that follows gives it the representative's position ids.

A video with every token present is merged by the fused :func:`vidllm_ext.ops.hierarchical_merge`
(one kernel call for all its segments). After DTD, segments hold different numbers of tokens:
segments of equal length are batched, and each round of each batch is one matching and one merge
launch (:func:`vidllm_ext.ops.bipartite_soft_matching`, :func:`vidllm_ext.ops.merge_wavg`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidllm_ext import ops
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration.sequence import VideoSegment


@dataclass
class MergeStats:
    """What hierarchical token merging did in the last forward that held video.

    Attributes:
        video_tokens_before: video tokens that reached the merge (after DTD when it is on).
        video_tokens_after: merged tokens passed on to the decoder.
        segments: segments merged, over every video of the batch.
        tokens_per_video: per video (batch order, then sequence order), the merged tokens kept.
        samples: the batch row of each entry of ``tokens_per_video``.
    """

    video_tokens_before: int = 0
    video_tokens_after: int = 0
    segments: int = 0
    tokens_per_video: list = field(default_factory=list)
    samples: list = field(default_factory=list)

    @property
    def merge_ratio(self) -> float:
        """Fraction of the tokens that reached the merge and were merged away."""
        before = self.video_tokens_before
        return 0.0 if before == 0 else 1.0 - self.video_tokens_after / before


def merge_video_tokens(
    embeds: torch.Tensor, segments: list[VideoSegment], keep: torch.Tensor, config: MergeConfig
) -> tuple[torch.Tensor, torch.Tensor, MergeStats]:
    """Merges every video of the batch segment by segment.

    Args:
        embeds: ``[batch, length, dim]`` LLM input embeddings.
        segments: the videos of the batch (columns in (step, position) order).
        keep: bool ``[batch, length]``: the tokens that reach the merge (False: dropped by DTD).
        config: the merge configuration.

    Returns:
        ``(embeds, keep, stats)``: a copy of embeds with every merged token written at its
        representative's column, and a copy of keep False on every video token merged away.
    """
    stats = MergeStats(samples=[segment.sample for segment in segments])
    if not segments:
        return embeds, keep, stats
    columns = [segment.columns.to(embeds.device) for segment in segments]
    before = _video_counts(keep, segments, columns)
    stats.segments = sum(-(-segment.steps // config.frames_per_segment) for segment in segments)
    embeds, keep = embeds.clone(), keep.clone()
    # Every segment's present tokens (DTD may have dropped some), every video of the batch in
    # one call: ops.hierarchical_merge merges each segment on its own, by its own schedule.
    samples = torch.cat(
        [torch.full_like(video, segment.sample) for segment, video in zip(segments, columns)]
    )
    flat_columns = torch.cat(columns)
    segment_of_token = torch.cat(_segment_ids(segments, columns, config))
    present = keep[samples, flat_columns]
    counts = torch.bincount(segment_of_token[present], minlength=stats.segments).tolist()
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    kept_samples, kept_columns = samples[present], flat_columns[present]
    result = ops.hierarchical_merge(
        embeds[kept_samples, kept_columns],
        segment_offsets=offsets,
        tokens_per_segment=config.tokens_per_segment,
        metric_chunks=config.metric_chunks,
    )
    owners, representatives = kept_samples[result.source_index], kept_columns[result.source_index]
    keep[samples, flat_columns] = False
    keep[owners, representatives] = True
    embeds[owners, representatives] = result.tokens.to(embeds.dtype)
    stats.tokens_per_video = _video_counts(keep, segments, columns)
    stats.video_tokens_before = sum(before)
    stats.video_tokens_after = sum(stats.tokens_per_video)
    return embeds, keep, stats


def _video_counts(keep: torch.Tensor, segments: list, columns: list) -> list[int]:
    """Per video, its tokens still kept (one host transfer)."""
    counts = [keep[segment.sample, video].sum() for segment, video in zip(segments, columns)]
    return torch.stack(counts).tolist()


def _segment_ids(segments: list[VideoSegment], columns: list, config: MergeConfig) -> list:
    """Per video, the merge segment (numbered across the batch) of each of its tokens."""
    ids, first = [], 0
    for segment, video in zip(segments, columns):
        span = config.frames_per_segment * segment.tokens
        ids.append(first + torch.arange(video.numel(), device=video.device) // span)
        first += -(-segment.steps // config.frames_per_segment)
    return ids
