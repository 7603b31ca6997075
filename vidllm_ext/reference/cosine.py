"""The package's one cosine similarity (DTD feature scores, token-merging similarities).

``cosine(a, b) = dot(a, b) / sqrt(max(|a|^2, eps^2) * max(|b|^2, eps^2))`` with ``eps^2 = 1e-16``
(as float32), NaN where a squared norm is not finite in float32. Mathematically torch's
``cosine_similarity`` (eps 1e-8 on each norm); the kernels (csrc/common/cosine.h) compute it from
float32 sums added so that identical vectors score exactly 1. This reference cannot control
PyTorch's float32 summation order, so it sums in float64 and rounds once to float32: identical
vectors then score exactly 1 too (the float64 result lies within a few 1e-16 of 1, which rounds to
1.0), and other vectors differ from the kernels only by float32 rounding of their sums (a few
1e-7 relative, growing slowly with the width), the band the tests allow around a decision.
"""

from __future__ import annotations

import torch

EPS_SQUARED = torch.tensor(1e-16, dtype=torch.float32).item()  # the float32 constant, exactly
FLOAT32_MAX = torch.finfo(torch.float32).max


def cosine_from_sums(
    dot: torch.Tensor, sum_sq_a: torch.Tensor, sum_sq_b: torch.Tensor
) -> torch.Tensor:
    """float32 cosine from float64 sums (broadcasting): see the module docstring."""
    finite = (sum_sq_a <= FLOAT32_MAX) & (sum_sq_b <= FLOAT32_MAX)  # False for inf and NaN
    denominator = (sum_sq_a.clamp_min(EPS_SQUARED) * sum_sq_b.clamp_min(EPS_SQUARED)).sqrt()
    return torch.where(finite, dot / denominator, torch.nan).float()


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 ``[...]``: the cosine of ``a [..., C]`` and ``b [..., C]`` along the last dim."""
    a, b = a.double(), b.double()
    return cosine_from_sums((a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1))


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 ``[B, |A|, |B|]``: the cosine of every row of ``a [B, |A|, C]`` with every row of
    ``b [B, |B|, C]``."""
    a, b = a.double(), b.double()
    a_sq = (a * a).sum(-1)[..., :, None]
    b_sq = (b * b).sum(-1)[..., None, :]
    return cosine_from_sums(a @ b.transpose(1, 2), a_sq, b_sq)
