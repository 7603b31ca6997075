"""Result types shared by the ops, the reference and the streaming helpers."""

from __future__ import annotations

from typing import NamedTuple

import torch


class DTDResult(NamedTuple):
    """Outcome of frame-difference token drop over ``frames [steps, tokens, dim]``.

    Attributes:
        kept: ``[K, dim]`` features of the kept tokens, in ``kept_index`` order, frames' dtype.
        kept_index: int64 ``[K]`` flat indices ``step * tokens + token``, ascending.
        keep_mask: bool ``[steps, tokens]``, True where a token is kept.
        counts: int32 ``[steps]``, kept tokens per step.
    """

    kept: torch.Tensor
    kept_index: torch.Tensor
    keep_mask: torch.Tensor
    counts: torch.Tensor

    @property
    def drop_ratio(self) -> torch.Tensor:
        """float32 ``[steps]``: the fraction of each step's tokens that was dropped."""
        tokens = self.keep_mask.shape[1]
        if tokens == 0:
            return torch.zeros(self.counts.shape, dtype=torch.float32, device=self.counts.device)
        return 1.0 - self.counts.to(torch.float32) / tokens
