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
from vidllm_ext.contracts.token_merge import MergeConfig, merge_schedule
from vidllm_ext.integration.sequence import VideoSegment
from vidllm_ext.ops.token_merge import chunk_mean_metric


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


@dataclass
class _Run:
    """The tokens of one segment that reach the merge: their columns in one sample, ascending."""

    sample: int
    columns: torch.Tensor


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
    embeds, keep = embeds.clone(), keep.clone()
    runs = []
    for segment, video_columns, count in zip(segments, columns, before):
        if count == video_columns.numel():  # every token present: the fused kernel
            _merge_whole_video(embeds, keep, segment, video_columns, config)
        else:
            runs += _segment_runs(segment, video_columns, keep, config)
        stats.segments += -(-segment.steps // config.frames_per_segment)
    for length, group in _by_length(runs).items():
        merged, kept_index = _merge_equal_runs(embeds, group, length, config)
        for run, tokens, index in zip(group, merged, kept_index):
            _write(embeds, keep, run.sample, run.columns, run.columns[index], tokens)
    stats.tokens_per_video = _video_counts(keep, segments, columns)
    stats.video_tokens_before = sum(before)
    stats.video_tokens_after = sum(stats.tokens_per_video)
    return embeds, keep, stats


def _video_counts(keep: torch.Tensor, segments: list, columns: list) -> list[int]:
    """Per video, its tokens still kept (one host transfer)."""
    counts = [keep[segment.sample, video].sum() for segment, video in zip(segments, columns)]
    return torch.stack(counts).tolist()


def _merge_whole_video(embeds, keep, segment: VideoSegment, columns, config: MergeConfig):
    frames = embeds[segment.sample, columns].view(segment.steps, segment.tokens, -1)
    result = ops.hierarchical_merge(
        frames,
        frames_per_segment=config.frames_per_segment,
        tokens_per_segment=config.tokens_per_segment,
        metric_chunks=config.metric_chunks,
    )
    _write(embeds, keep, segment.sample, columns, columns[result.source_index], result.tokens)


def _segment_runs(segment: VideoSegment, columns, keep, config: MergeConfig) -> list[_Run]:
    """The present tokens of each segment of a video that lost some to DTD (empty ones left out)."""
    present = keep[segment.sample, columns]
    span = config.frames_per_segment * segment.tokens
    runs = []
    for start in range(0, columns.numel(), span):
        run = columns[start : start + span][present[start : start + span]]
        if run.numel():
            runs.append(_Run(segment.sample, run))
    return runs


def _by_length(runs: list[_Run]) -> dict[int, list[_Run]]:
    groups: dict[int, list[_Run]] = {}
    for run in runs:
        groups.setdefault(run.columns.numel(), []).append(run)
    return groups


def _merge_equal_runs(embeds, group: list[_Run], length: int, config: MergeConfig):
    """Merges runs of equal length together: ``(tokens [G, M, D], kept_index [G, M])`` with
    kept_index the position in its run of each merged token's representative."""
    x = torch.stack([embeds[run.sample, run.columns] for run in group])
    kept_index = torch.arange(length, device=x.device).expand(len(group), length)
    size = None
    for r in merge_schedule(length, config.tokens_per_segment):
        plan = ops.bipartite_soft_matching(chunk_mean_metric(x, config.metric_chunks), r)
        x, size = ops.merge_wavg(plan, x, size)
        kept_index = kept_index.gather(1, plan.kept_index)
    return x, kept_index


def _write(embeds, keep, sample: int, columns, representatives, tokens) -> None:
    """The merged tokens replace the video's (or segment's) tokens at their representatives."""
    keep[sample, columns] = False
    keep[sample, representatives] = True
    embeds[sample, representatives] = tokens.to(embeds.dtype)
