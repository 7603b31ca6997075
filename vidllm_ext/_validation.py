"""Argument checks shared by the ops and the reference, so both raise the same exceptions.

They read only shapes, dtypes and Python values, so they also run on fake tensors while
``torch.compile`` traces. The C++ bindings repeat the checks for callers of ``vidllm_ext._C``.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTD_METHODS = ("feature", "pixel")
DTD_MODES = ("absolute", "relative")


# The kernels take int64 scalars: a larger Python int cannot reach them.
INT64_MAX = 2**63 - 1


def check_tensor(value: object, name: str) -> torch.Tensor:
    """A torch.Tensor with data (CPU or CUDA; a meta tensor has none for the kernels to read)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta":
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got a meta tensor")
    return value


def check_float_dtype(tensor: torch.Tensor, name: str) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {tensor.dtype}")


def check_frames(frames: object) -> torch.Tensor:
    """frames: float [steps, tokens, dim] with dim >= 1."""
    frames = check_tensor(frames, "frames")
    if frames.dim() != 3:
        raise ValueError(
            f"frames: expected a 3-D tensor [steps, tokens, dim], got shape {list(frames.shape)}"
        )
    check_float_dtype(frames, "frames")
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
    if prev.device != frames.device:
        raise ValueError(
            f"prev: expected a tensor on {frames.device} like frames, got {prev.device}"
        )
    return prev


def check_choice(value: object, choices: tuple, name: str) -> str:
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


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
    expected = list(frames.shape[:2])
    if list(keep_mask.shape) != expected:
        raise ValueError(
            f"keep_mask: expected shape {expected} ([steps, tokens] of frames), "
            f"got {list(keep_mask.shape)}"
        )
    if keep_mask.device != frames.device:
        raise ValueError(
            f"keep_mask: expected a tensor on {frames.device} like frames, got {keep_mask.device}"
        )
    return keep_mask


def check_positive_int(value: object, name: str) -> int:
    """A Python int (not bool) >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    if value > INT64_MAX:
        raise ValueError(f"{name}: expected an int <= 2^63 - 1, got {value}")
    return value


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
