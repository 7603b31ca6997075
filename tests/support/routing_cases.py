"""Inputs shared by the routing tests: segment layouts, scores with hostile values, row tensors."""

from __future__ import annotations

import math

import torch

ROW_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def offsets_from_counts(counts) -> torch.Tensor:
    """int64 [len(counts) + 1]: 0 and the running sum of the tokens per segment."""
    counts = torch.as_tensor(counts, dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])


# Tokens per segment: frames of a video, odd and empty segments, one long segment past 4k tokens,
# thousands of tiny segments, nothing at all.
SEGMENT_LAYOUTS = {
    "frames_16x256": [256] * 16,
    "odd": [1, 7, 257, 33, 32, 31, 2],
    "empty_segments": [0, 5, 0, 0, 40, 0],
    "single_257": [257],
    "single_1": [1],
    "long_4100": [3, 4100, 64],
    "tiny_many": "tiny",
    "no_segments": [],
    "all_empty": [0, 0, 0],
}


def layout_counts(name: str) -> list[int]:
    counts = SEGMENT_LAYOUTS[name]
    if counts == "tiny":  # 3000 segments of 0 to 3 tokens
        return torch.randint(0, 4, (3000,), generator=generator(5)).tolist()
    return list(counts)


def random_scores(tokens: int, dtype: torch.dtype, seed: int = 0, hostile: bool = False):
    """Random float scores; hostile ones also hold NaN, +-inf, -0.0/+0.0 and many exact ties."""
    gen = generator(seed)
    scores = torch.randn(tokens, generator=gen)
    if hostile and tokens:
        kind = torch.randint(0, 8, (tokens,), generator=gen)
        scores = torch.where(kind == 0, math.nan, scores)
        scores = torch.where(kind == 1, math.inf, scores)
        scores = torch.where(kind == 2, -math.inf, scores)
        scores = torch.where(kind == 3, -0.0, scores)
        scores = torch.where(kind == 4, 0.0, scores)
        scores = torch.where(kind == 5, torch.randint(-2, 3, (tokens,), generator=gen), scores)
    return scores.to(dtype)


def random_rows(rows: int, dim: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Never zeros: normal values with a per-row scale."""
    gen = generator(seed)
    scale = torch.rand(rows, 1, generator=gen) * 3 + 0.1
    return (torch.randn(rows, dim, generator=gen) * scale).to(dtype)


def unique_index(rows: int, count: int, seed: int = 0) -> torch.Tensor:
    """count distinct rows of [0, rows), in random order."""
    return torch.randperm(rows, generator=generator(seed))[:count]


def repeating_index(rows: int, count: int, seed: int = 0) -> torch.Tensor:
    """count rows of [0, rows), drawn with repetition."""
    return torch.randint(0, rows, (count,), generator=generator(seed))


def reference_topk_loop(scores: torch.Tensor, counts: list[int], keep_ratio: float) -> list[int]:
    """The selection spelled out segment by segment in plain Python (tests only): sort each
    segment by (NaN last, score descending, index ascending), keep ceil(keep_ratio * n)."""
    values = scores.float().tolist()
    selected, first = [], 0
    for n in counts:
        members = range(first, first + n)
        ranked = sorted(members, key=lambda i: (math.isnan(values[i]), -values[i], i))
        kept = min(n, math.ceil(keep_ratio * n))
        selected += sorted(ranked[:kept])
        first += n
    return selected
