"""When the ops check the values inside the structures they are handed (plans, packed KV).

A :class:`~vidllm_ext.contracts.token_merge.MergePlan`, a ``PackedKeys``/``PackedValues`` or a
packed cache
layer is a bundle of tensors that must agree with each other. Their shapes, dtypes and devices are
always checked (O(metadata)). Their index tensors (plan slots and offsets, channel splits, salient
positions) are also range-checked, an O(n) pass over those small int64 tensors (n = tokens, not
tokens x features) on the tensors' device:

- on the CPU by default; ``VIDLLM_CHECK_STRUCTURES=0`` turns it off (a tampered structure then
  reads clamped indices: garbage out, never out-of-bounds memory);
- on CUDA only when ``VIDLLM_CHECK_STRUCTURES=1`` or ``VIDLLM_CHECK_INDEX=1``: the check reads a
  flag back, one host synchronization per call;
- never while ``torch.compile`` traces or on meta tensors, which have no values.
"""

from __future__ import annotations

import os

import torch

STRUCTURE_CHECK_ENV = "VIDLLM_CHECK_STRUCTURES"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _env(name: str) -> str:
    return os.environ.get(name, "").strip().lower()


def values_checked(tensor: torch.Tensor) -> bool:
    """Whether the O(n) value checks run for structures living where ``tensor`` lives."""
    if tensor.device.type == "meta" or torch.compiler.is_compiling():
        return False
    if isinstance(tensor, torch._subclasses.fake_tensor.FakeTensor):
        return False
    setting = _env(STRUCTURE_CHECK_ENV)
    if tensor.device.type == "cpu":
        return setting not in _OFF
    return setting in _ON or _env("VIDLLM_CHECK_INDEX") in _ON


def first_bad(bad: torch.Tensor) -> list[int] | None:
    """The position of the first True of ``bad`` (one host read), or None."""
    if bad.numel() == 0 or not bool(bad.any()):
        return None
    return bad.nonzero()[0].tolist()


def check_int_tensor(value: object, name: str, dims: int) -> torch.Tensor:
    """An int64 tensor of ``dims`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype != torch.int64:
        raise TypeError(f"{name}: expected dtype torch.int64, got {value.dtype}")
    if value.dim() != dims:
        raise ValueError(f"{name}: expected a {dims}-D tensor, got shape {list(value.shape)}")
    return value


def check_range(tensor: torch.Tensor, name: str, low: int, high: int) -> None:
    """Every entry in [low, high) (a value check: call it when :func:`values_checked`)."""
    where = first_bad((tensor < low) | (tensor >= high))
    if where is not None:
        raise ValueError(
            f"{name}: expected entries in [{low}, {high}), got {int(tensor[tuple(where)])} "
            f"at {where}"
        )


def check_ascending(tensor: torch.Tensor, name: str, strict: bool) -> None:
    """Rows (last dimension) ascending, strictly when ``strict``."""
    if tensor.shape[-1] < 2:
        return
    step = tensor[..., 1:] - tensor[..., :-1]
    where = first_bad(step <= 0 if strict else step < 0)
    if where is not None:
        what = "strictly ascending" if strict else "non-decreasing"
        raise ValueError(f"{name}: expected {what} rows, got a step of {int(step[tuple(where)])}")
