"""Frame-difference token drop (TimeChat-Online) in vectorized PyTorch: the spec the kernels match.

frames is [steps, tokens, dim]; step t is compared with the full step t - 1 (``prev`` for t = 0).
"""

from __future__ import annotations

import math

import torch

from vidllm_ext.contracts import frame_drop as check
from vidllm_ext.contracts.frame_drop import DTDResult
from vidllm_ext.reference.cosine import cosine_similarity


def dtd_scores(
    frames: torch.Tensor, *, method: str = "feature", prev: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 [steps, tokens]: cosine similarity (feature, see reference.cosine: identical
    tokens score exactly 1) or mean |difference| (pixel) to the previous step; NaN for step 0
    when prev is None."""
    frames = check.check_frames(frames)
    method = check.check_choice(method, check.DTD_METHODS, "method")
    prev = check.check_prev(prev, frames)
    current = frames.float()
    first = prev.float()[None] if prev is not None else torch.zeros_like(current[:1])
    previous = torch.cat([first, current[:-1]])
    if method == "feature":
        scores = cosine_similarity(current, previous)
    else:
        scores = (current - previous).abs().mean(-1)
    if prev is None and scores.shape[0] > 0:
        scores[0] = math.nan
    return scores


def drop_mask_relative(redundancy: torch.Tensor, drop_per_step: int) -> torch.Tensor:
    """bool [steps, tokens]: the drop_per_step most redundant non-NaN tokens of each step (ties:
    lower index first)."""
    is_nan = redundancy.isnan()
    # Two stable sorts: by redundancy descending, then NaN last; equal values keep index order.
    order = torch.sort(redundancy.nan_to_num(nan=-math.inf), dim=-1, descending=True, stable=True)[
        1
    ]
    order = order.gather(-1, torch.sort(is_nan.gather(-1, order).byte(), dim=-1, stable=True)[1])
    quota = torch.clamp((~is_nan).sum(-1, keepdim=True), max=drop_per_step)
    rank = torch.arange(redundancy.shape[-1], device=redundancy.device).expand_as(order)
    drop = torch.zeros_like(is_nan)
    return drop.scatter(-1, order, rank < quota)


def keep_mask_from_scores(
    scores: torch.Tensor, threshold: float, *, method: str = "feature", mode: str = "absolute"
) -> torch.Tensor:
    """bool [steps, tokens] from float32 scores [steps, tokens]: the decision half of
    dtd_keep_mask, exposed so tests can check a kernel's decisions against its own scores."""
    if mode == "absolute":
        limit = torch.tensor(threshold, dtype=torch.float32, device=scores.device)
        return ~(scores > limit if method == "feature" else scores < limit)
    redundancy = scores if method == "feature" else -scores
    return ~drop_mask_relative(redundancy, math.floor(scores.shape[1] * threshold))


def dtd_keep_mask(
    frames: torch.Tensor,
    threshold: float,
    *,
    method: str = "feature",
    mode: str = "absolute",
    prev: torch.Tensor | None = None,
) -> torch.Tensor:
    """bool [steps, tokens], True where a token is kept. Absolute: drop iff cosine > threshold
    (feature) or mean |difference| < threshold (pixel), compared in float32. Relative: drop the
    floor(tokens * threshold) most redundant tokens of every compared step. NaN never drops."""
    frames, threshold, method, mode, prev = check.check_dtd_args(
        frames, threshold, method, mode, prev
    )
    scores = dtd_scores(frames, method=method, prev=prev)
    return keep_mask_from_scores(scores, threshold, method=method, mode=mode)


def compact_tokens(
    frames: torch.Tensor, keep_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept [K, dim], kept_index int64 [K], counts int32 [steps]); kept_index holds the flat
    indices step * tokens + token of the kept tokens in ascending order."""
    frames = check.check_frames(frames)
    keep_mask = check.check_keep_mask(keep_mask, frames)
    kept_index = keep_mask.flatten().nonzero().flatten()
    kept = frames.reshape(-1, frames.shape[2])[kept_index]
    return kept, kept_index, keep_mask.sum(-1, dtype=torch.int32)


def drop_redundant_tokens(frames: torch.Tensor, threshold: float, **options) -> DTDResult:
    """:func:`dtd_keep_mask` (which takes the keyword ``options``) followed by
    :func:`compact_tokens`."""
    keep_mask = dtd_keep_mask(frames, threshold, **options)
    kept, kept_index, counts = compact_tokens(frames, keep_mask)
    return DTDResult(kept, kept_index, keep_mask, counts)
