"""merge_video_tokens (the step between the vision tower and the decoder) against the spec: each
segment's surviving tokens merged by rounds of the reference's bipartite soft matching, written at
their representatives' columns; videos whole or thinned by DTD (uneven and empty segments), several
per batch, all merged by one hierarchical_merge call."""

import pytest
import torch

from vidllm_ext import reference
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration.sequence import VideoSegment
from vidllm_ext.integration.token_merge import merge_video_tokens
from vidllm_ext.reference.token_merge import chunk_mean_metric, merge_schedule


def spec_merge(embeds, segments, keep, config):
    """Segment by segment with the reference ops, as the patched model is specified."""
    embeds, keep = embeds.clone(), keep.clone()
    for video in segments:
        span = config.frames_per_segment * video.tokens
        present = keep[video.sample, video.columns]
        keep[video.sample, video.columns] = False
        for start in range(0, video.columns.numel(), span):
            columns = video.columns[start : start + span][present[start : start + span]]
            x, size, kept = embeds[video.sample, columns][None], None, torch.arange(columns.numel())
            for r in merge_schedule(columns.numel(), config.tokens_per_segment):
                plan = reference.bipartite_soft_matching(
                    chunk_mean_metric(x, config.metric_chunks), r
                )
                x, size = reference.merge_wavg(plan, x, size)
                kept = kept[plan.kept_index[0]]
            keep[video.sample, columns[kept]] = True
            embeds[video.sample, columns[kept]] = x[0]
    return embeds, keep


def batch(seed):
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(2, 160, 16, generator=generator)
    segments = []
    for sample in range(2):
        start = 3
        for steps, tokens in [(5, 6), (3, 4)][: 1 + (seed + sample) % 2]:
            columns = torch.arange(start, start + steps * tokens)
            segments.append(
                VideoSegment(sample=sample, columns=columns, steps=steps, tokens=tokens)
            )
            start += steps * tokens + 5
    drop = [0.0, 0.3, 0.8][seed % 3]
    keep = torch.rand(2, 160, generator=generator) >= drop
    return embeds, segments, keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tokens_per_segment", [1, 3, 7])
def test_merge_video_tokens_matches_the_spec(seed, tokens_per_segment):
    config = MergeConfig(
        frames_per_segment=2, tokens_per_segment=tokens_per_segment, metric_chunks=4
    )
    embeds, segments, keep = batch(seed)
    merged, merged_keep, stats = merge_video_tokens(embeds, segments, keep, config)
    expected, expected_keep = spec_merge(embeds, segments, keep, config)
    assert torch.equal(merged_keep, expected_keep)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
    kept = [int(merged_keep[v.sample, v.columns].sum()) for v in segments]
    assert stats.tokens_per_video == kept and stats.video_tokens_after == sum(kept)
    assert stats.video_tokens_before == sum(int(keep[v.sample, v.columns].sum()) for v in segments)
