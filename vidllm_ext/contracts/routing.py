"""Layer-skip routing's contract: configuration and argument checks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from vidllm_ext.contracts.checks import (
    FLOAT_DTYPES,
    check_choice,
    check_device,
    check_float_tensor,
    check_shape,
    check_tensor,
)

# ---- argument checks
# Row tensors (gather, scatter) also take float64, so gradients can be checked numerically.
ROW_DTYPES = (*FLOAT_DTYPES, torch.float64)
GATES = ("sigmoid2", "raw", "none")
CHECK_INDEX_ENV = "VIDLLM_CHECK_INDEX"


def check_index_enabled(check_index: bool | None) -> bool:
    """``check_index`` itself, or when None whether the environment variable
    ``VIDLLM_CHECK_INDEX`` is set to 1 (or true, yes, on)."""
    if check_index is None:
        return os.environ.get(CHECK_INDEX_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(check_index, bool):
        raise TypeError(f"check_index: expected a bool or None, got {type(check_index).__name__}")
    return check_index


def check_scores(scores: object) -> torch.Tensor:
    """scores: float32/float16/bfloat16 [tokens]."""
    return check_float_tensor(scores, "scores", "[tokens]")


def check_segment_offsets(
    segment_offsets: object, like: torch.Tensor, like_name: str = "scores"
) -> torch.Tensor:
    """segment_offsets: int64 [segments + 1] on like's device (values are checked later)."""
    offsets = check_tensor(segment_offsets, "segment_offsets")
    if offsets.dtype != torch.int64:
        raise TypeError(f"segment_offsets: expected dtype torch.int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(
            "segment_offsets: expected a 1-D tensor [segments + 1] with at least one entry, got "
            f"shape {list(offsets.shape)}"
        )
    check_device(offsets, "segment_offsets", like.device, like_name)
    return offsets


def check_keep_ratio(keep_ratio: object) -> float:
    """keep_ratio: a Python number in [0, 1]."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)):
        raise TypeError(f"keep_ratio: expected a Python float, got {type(keep_ratio).__name__}")
    keep_ratio = float(keep_ratio)
    if not (math.isfinite(keep_ratio) and 0.0 <= keep_ratio <= 1.0):
        raise ValueError(f"keep_ratio: expected a fraction in [0, 1], got {keep_ratio}")
    return keep_ratio


def check_rows(rows: object, name: str, layout: str = "[rows, dim]") -> torch.Tensor:
    """A 2-D float32/float16/bfloat16/float64 tensor."""
    return check_float_tensor(rows, name, layout, ROW_DTYPES)


def check_index(index: object, x: torch.Tensor, x_name: str = "x") -> torch.Tensor:
    """index: int64 [count] on x's device (entries are checked later)."""
    index = check_tensor(index, "index")
    if index.dtype != torch.int64:
        raise TypeError(f"index: expected dtype torch.int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"index: expected a 1-D tensor [count], got shape {list(index.shape)}")
    check_device(index, "index", x.device, x_name)
    return index


def check_delta(delta: object, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """delta: [count, dim] with x's dtype and device."""
    delta = check_rows(delta, "delta", "[count, dim]")
    check_shape(delta, "delta", [index.shape[0], x.shape[1]], "count of index, dim of x")
    if delta.dtype != x.dtype:
        raise TypeError(f"delta: expected dtype {x.dtype} like x, got {delta.dtype}")
    check_device(delta, "delta", x.device, "x")
    return delta


def check_weight(weight: object, index: torch.Tensor) -> torch.Tensor | None:
    """weight: None, or a float [count] on index's device."""
    if weight is None:
        return None
    weight = check_tensor(weight, "weight")
    if weight.dtype not in ROW_DTYPES:
        raise TypeError(
            f"weight: expected dtype float32, float16, bfloat16 or float64, got {weight.dtype}"
        )
    check_shape(weight, "weight", [index.shape[0]], "one per index entry")
    check_device(weight, "weight", index.device, "index")
    return weight


def check_int64_output(
    tensor: object, name: str, like: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """An int64 [size] (or any length) contiguous output on like's device."""
    tensor = check_tensor(tensor, name)
    if tensor.dtype != torch.int64:
        raise TypeError(f"{name}: expected dtype torch.int64, got {tensor.dtype}")
    if tensor.dim() != 1 or (size is not None and tensor.shape[0] != size):
        expected = "[capacity]" if size is None else f"[{size}]"
        raise ValueError(
            f"{name}: expected a 1-D tensor {expected}, got shape {list(tensor.shape)}"
        )
    if not tensor.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (it is written in place)")
    check_device(tensor, name, like.device, "scores")
    return tensor


def check_gate(gate: object) -> str:
    if gate not in GATES:
        expected = ", ".join(repr(g) for g in GATES)
        raise ValueError(f"gate: expected one of {expected}, got {gate!r}")
    return gate


def check_selection_inputs(
    scores: object, is_video: object, segment_offsets: object, tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores [tokens] float (float64 too); is_video bool [tokens]; segment_offsets int64
    [segments + 1] over the video tokens; all on scores' device."""
    scores = check_tensor(scores, "scores")
    if tokens is None and scores.dim() != 1:
        raise ValueError(f"scores: expected a 1-D tensor [tokens], got shape {list(scores.shape)}")
    tokens = scores.shape[0] if tokens is None else tokens
    check_shape(scores, "scores", [tokens], "one per token of hidden")
    if scores.dtype not in ROW_DTYPES:
        raise TypeError(
            f"scores: expected dtype float32, float16, bfloat16 or float64, got {scores.dtype}"
        )
    is_video = check_tensor(is_video, "is_video")
    if is_video.dtype != torch.bool:
        raise TypeError(f"is_video: expected dtype torch.bool, got {is_video.dtype}")
    check_shape(is_video, "is_video", [tokens], "one per token")
    check_device(is_video, "is_video", scores.device, "scores")
    return scores, is_video, check_segment_offsets(segment_offsets, scores)


def check_routed_inputs(
    hidden: object, scores: object, is_video: object, segment_offsets: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [tokens, dim] and the selection inputs (:func:`check_selection_inputs`), all on
    hidden's device."""
    hidden = check_rows(hidden, "hidden", "[tokens, dim]")
    scores, is_video, offsets = check_selection_inputs(
        scores, is_video, segment_offsets, hidden.shape[0]
    )
    check_device(scores, "scores", hidden.device, "hidden")
    return hidden, scores, is_video, offsets


@dataclass(frozen=True)
class MoDConfig:
    """Layer-skip routing of video tokens (VideoLLM-MoD's mixture of depths).

    In every routed decoder layer a learned router (``Linear(hidden_size -> 1)``) scores the video
    tokens; in each temporal step of each video only the top ``ceil(keep_ratio * n)`` pass through
    the layer's attention and MLP, the rest skip it. Text tokens always go through.

    Args:
        keep_ratio: fraction of each step's video tokens a routed layer processes, in [0, 1].
        gate: how a selected video token takes the layer's update ``delta``:
            ``"sigmoid2"`` ``h + 2 sigmoid(s) delta`` (a zero score gives the exact update; the
            default), ``"raw"`` ``h + s delta`` (the MoD paper), ``"none"`` ``h + delta``.
        layers: ``"interleaved"`` (every other decoder layer starting with the second,
            VideoLLM-MoD's best setting) or an explicit sequence of decoder layer indices.

    Example:
        >>> vidllm_ext.patch(model, mod=vidllm_ext.MoDConfig(keep_ratio=0.2))
    """

    keep_ratio: float = 0.2
    gate: str = "sigmoid2"
    layers: str | tuple[int, ...] = "interleaved"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", check_keep_ratio(self.keep_ratio))
        check_gate(self.gate)
        layers = self.layers
        if isinstance(layers, str):
            check_choice(layers, ("interleaved",), "layers")
            return
        try:
            layers = tuple(layers)
        except TypeError:
            raise TypeError(
                f"layers: expected 'interleaved' or a sequence of layer indices, got "
                f"{type(self.layers).__name__}"
            ) from None
        for index in layers:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"layers: expected non-negative int layer indices, got {index!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers: a layer is listed twice in {list(layers)}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))


def check_routed_update_args(hidden, scores, is_video, segment_offsets, keep_ratio, gate):
    """The arguments of routed_update, checked and normalized, in that order (less layer_fn)."""
    hidden, scores, is_video, segment_offsets = check_routed_inputs(
        hidden, scores, is_video, segment_offsets
    )
    return hidden, scores, is_video, segment_offsets, check_keep_ratio(keep_ratio), check_gate(gate)
