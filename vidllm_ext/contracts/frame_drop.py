"""Frame-difference token drop's contract: its configuration, result type and argument checks,
shared by the ops, the reference and the integration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from vidllm_ext.contracts.checks import (
    check_choice,
    check_device,
    check_float_tensor,
    check_shape,
    check_tensor,
)

DTD_METHODS = ("feature", "pixel")
DTD_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class DTDConfig:
    """Frame-difference token drop inside a video LLM (TimeChat-Online).

    Args:
        threshold: ``mode="absolute"``: drop a video token whose cosine similarity to the same
            position one temporal step earlier exceeds it (``method="feature"``, in [-1, 1]), or
            whose mean absolute pixel difference is below it (``method="pixel"``, >= 0).
            ``mode="relative"``: the fraction in [0, 1] of each step's tokens to drop.
        method: ``"feature"`` compares the LLM input embeddings of the video tokens;
            ``"pixel"`` compares the processor's pixel patches under each token.
        mode: ``"absolute"`` or ``"relative"``.

    Example:
        >>> vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold=0.5))
    """

    threshold: float = 0.5
    method: str = "feature"
    mode: str = "absolute"

    def __post_init__(self) -> None:
        check_choice(self.method, DTD_METHODS, "method")
        check_choice(self.mode, DTD_MODES, "mode")
        object.__setattr__(
            self, "threshold", check_dtd_threshold(self.threshold, self.method, self.mode)
        )


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


def check_frames(frames: object) -> torch.Tensor:
    """frames: float [steps, tokens, dim] with dim >= 1."""
    frames = check_float_tensor(frames, "frames", "[steps, tokens, dim]")
    if frames.shape[2] < 1:
        raise ValueError(
            f"frames: expected a non-empty feature dimension, got shape {list(frames.shape)}"
        )
    return frames


def check_prev(prev: object, frames: torch.Tensor) -> torch.Tensor | None:
    """prev: None, or [tokens, dim] with frames' dtype and device."""
    if prev is None:
        return None
    prev = check_tensor(prev, "prev")
    expected = list(frames.shape[1:])
    if prev.dim() != 2 or list(prev.shape) != expected:
        raise ValueError(
            f"prev: expected shape {expected} ([tokens, dim] of frames), got {list(prev.shape)}"
        )
    if prev.dtype != frames.dtype:
        raise TypeError(f"prev: expected dtype {frames.dtype} like frames, got {prev.dtype}")
    check_device(prev, "prev", frames.device, "frames")
    return prev


def check_dtd_threshold(threshold: object, method: str, mode: str) -> float:
    """The threshold as a float. Relative mode: a fraction in [0, 1]; feature/absolute: a cosine
    in [-1, 1]; pixel/absolute: a finite value >= 0."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold: expected a Python float, got {type(threshold).__name__}")
    threshold = float(threshold)
    if mode == "relative":
        low, high, what = 0.0, 1.0, "a fraction in [0, 1]"
    elif method == "feature":
        low, high, what = -1.0, 1.0, "a cosine similarity in [-1, 1]"
    else:
        low, high, what = 0.0, math.inf, "a finite mean absolute difference >= 0"
    if not (math.isfinite(threshold) and low <= threshold <= high):
        raise ValueError(
            f"threshold: expected {what} for method {method!r} in mode {mode!r}, got {threshold}"
        )
    return threshold


def check_dtd_args(frames: object, threshold: object, method: object, mode: object, prev: object):
    frames = check_frames(frames)
    method = check_choice(method, DTD_METHODS, "method")
    mode = check_choice(mode, DTD_MODES, "mode")
    return (
        frames,
        check_dtd_threshold(threshold, method, mode),
        method,
        mode,
        check_prev(prev, frames),
    )


def check_keep_mask(keep_mask: object, frames: torch.Tensor) -> torch.Tensor:
    """keep_mask: bool [steps, tokens] on frames' device."""
    keep_mask = check_tensor(keep_mask, "keep_mask")
    if keep_mask.dtype != torch.bool:
        raise TypeError(f"keep_mask: expected dtype torch.bool, got {keep_mask.dtype}")
    check_shape(keep_mask, "keep_mask", frames.shape[:2], "[steps, tokens] of frames")
    check_device(keep_mask, "keep_mask", frames.device, "frames")
    return keep_mask


def check_compact_outputs(
    frames: torch.Tensor, kept: object, kept_index: object, counts: object, total: object
) -> None:
    """Outputs of compact_tokens_into, written in place: kept [capacity, dim] of frames' dtype,
    kept_index int64 [capacity], counts int32 [steps] or None, total int64 [1] or None, all
    contiguous on frames' device."""
    steps, _, dim = frames.shape
    kept = check_tensor(kept, "kept")
    capacity = kept.shape[0] if kept.dim() == 2 else -1
    expected = {
        "kept": (kept, frames.dtype, [capacity, dim]),
        "kept_index": (kept_index, torch.int64, [capacity]),
        "counts": (counts, torch.int32, [steps]),
        "total": (total, torch.int64, [1]),
    }
    for name, (tensor, dtype, shape) in expected.items():
        if tensor is None and name in ("counts", "total"):
            continue
        tensor = check_tensor(tensor, name)
        if tensor.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {tensor.dtype}")
        if list(tensor.shape) != shape or capacity < 0:
            shown = ["capacity", dim] if name == "kept" else shape
            raise ValueError(f"{name}: expected shape {shown}, got {list(tensor.shape)}")
        if not tensor.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor (it is written in place)")
        if tensor.device != frames.device:
            raise ValueError(f"{name}: expected a tensor on {frames.device} like frames")
