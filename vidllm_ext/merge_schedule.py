"""Host-side geometry of hierarchical merging: segments of a video and the merges per round.

Plain Python on shapes, so the ops know every size before launching anything (no device sync).
"""

from __future__ import annotations

from typing import NamedTuple


class Segments(NamedTuple):
    """Frames ``[F, N]`` cut into segments of ``frames_per_segment`` consecutive frames.

    Attributes:
        count: S, the number of segments (0 for an empty video).
        tokens: tokens of every segment but the last (``frames_per_segment * N``, or ``F * N``
            when there is only one segment).
        last_tokens: tokens of the last segment (``tokens`` unless it has fewer frames).
    """

    count: int
    tokens: int
    last_tokens: int


def video_segments(frames: int, tokens_per_frame: int, frames_per_segment: int) -> Segments:
    """Cuts ``frames`` frames of ``tokens_per_frame`` tokens into segments.

    Example:
        >>> video_segments(25, 256, 10)
        Segments(count=3, tokens=2560, last_tokens=1280)
    """
    if frames == 0:
        return Segments(0, 0, 0)
    count = -(-frames // frames_per_segment)
    full_frames = min(frames, frames_per_segment)
    last_frames = frames - (count - 1) * frames_per_segment
    return Segments(count, full_frames * tokens_per_frame, last_frames * tokens_per_frame)


def merge_schedule(tokens: int, target: int) -> list[int]:
    """Merges per round that take ``tokens`` down to ``target`` (LongVLM): each round merges
    ``min(T_i - target, T_i // 2)``; none when ``tokens <= target``.

    Example:
        >>> merge_schedule(2560, 30)
        [1280, 640, 320, 160, 80, 40, 10]
    """
    rounds = []
    while tokens > target:
        merges = min(tokens - target, tokens // 2)
        rounds.append(merges)
        tokens -= merges
    return rounds


def merged_token_count(segments: Segments, tokens_per_segment: int) -> int:
    """Tokens left after merging every segment down to ``tokens_per_segment`` (a segment that
    holds fewer keeps them all).

    Example:
        >>> merged_token_count(video_segments(25, 256, 10), 30)
        90
    """
    if segments.count == 0:
        return 0
    full = min(segments.tokens, tokens_per_segment)
    return (segments.count - 1) * full + min(segments.last_tokens, tokens_per_segment)
