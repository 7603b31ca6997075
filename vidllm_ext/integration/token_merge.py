"""Hierarchical merging of a batch's video tokens before the decoder (LongVLM; model-agnostic).

Every video is cut into segments of ``frames_per_segment`` temporal steps; the tokens of a segment
that reach the merge (all of them, or those DTD kept) are merged down to ``tokens_per_segment``.
A merged token is written at the column of its representative (the destination that survived
every round), so the compaction that follows gives it the representative's position ids.

Every segment of every video of the batch, whole or thinned by DTD (segments of uneven lengths,
some maybe empty), is merged by one call of :func:`vidllm_ext.ops.hierarchical_merge` with segment
offsets: each segment on its own schedule, one kernel call for the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidllm_ext import ops
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration.sequence import VideoSegment, VideoTokenStats


@dataclass
class MergeStats(VideoTokenStats):
    """What hierarchical token merging did in the last forward that held video.

    Attributes:
        video_tokens_before: video tokens that reached the merge (after DTD when it is on).
        video_tokens_after: merged tokens passed on to the decoder.
        segments: segments merged, over every video of the batch.
        tokens_per_video: per video (batch order, then sequence order), the merged tokens kept.
        samples: the batch row of each entry of ``tokens_per_video``.
    """

    segments: int = 0
    tokens_per_video: list = field(default_factory=list)

    @property
    def merge_ratio(self) -> float:
        """Fraction of the tokens that reached the merge and were merged away."""
        return self.removed_fraction


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
    samples, columns, segment_of, per_video = _video_layout(segments, config, embeds.device)
    present = keep[samples, columns]
    counts = torch.zeros(sum(per_video), dtype=torch.int64, device=embeds.device)
    counts = counts.index_add_(0, segment_of, present.long()).tolist()  # one host transfer
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    present_samples, present_columns = samples[present], columns[present]
    result = ops.hierarchical_merge(
        embeds[present_samples, present_columns],
        segment_offsets=offsets,
        tokens_per_segment=config.tokens_per_segment,
        metric_chunks=config.metric_chunks,
    )
    # The merged tokens replace the videos' tokens at their representatives.
    embeds, keep = embeds.clone(), keep.clone()
    keep[samples, columns] = False
    rows = present_samples[result.source_index]
    representatives = present_columns[result.source_index]
    keep[rows, representatives] = True
    embeds[rows, representatives] = result.tokens.to(embeds.dtype)
    first = 0
    for videos_segments in per_video:
        video_counts = counts[first : first + videos_segments]
        first += videos_segments
        stats.video_tokens_before += sum(video_counts)
        stats.tokens_per_video.append(
            sum(min(count, config.tokens_per_segment) for count in video_counts)
        )
    stats.segments = sum(per_video)
    stats.video_tokens_after = sum(stats.tokens_per_video)
    return embeds, keep, stats


def _video_layout(segments: list[VideoSegment], config: MergeConfig, device):
    """``(samples, columns, segment_of, per_video)``: every video token's batch row, column and
    segment (numbered over the batch, video after video), and each video's segment count."""
    samples, columns, segment_of, per_video = [], [], [], []
    first = 0
    for video in segments:
        video_columns = video.columns.to(device)
        span = max(config.frames_per_segment * video.tokens, 1)
        columns.append(video_columns)
        samples.append(torch.full_like(video_columns, video.sample))
        segment_of.append(first + torch.arange(video_columns.numel(), device=device) // span)
        per_video.append(-(-video.steps // config.frames_per_segment))
        first += per_video[-1]
    return torch.cat(samples), torch.cat(columns), torch.cat(segment_of), per_video
