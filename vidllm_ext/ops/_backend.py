"""How the ops hand torch tensors to vidllm_ext._C: DLPack capsules plus the current stream."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.dlpack import to_dlpack

from vidllm_ext._extension import _C

C = _C


def dl(tensor: torch.Tensor | None):
    """A DLPack capsule for tensor (no stream synchronization, no copy), or None."""
    return None if tensor is None else to_dlpack(tensor.detach())


def stream_of(tensor: torch.Tensor) -> int:
    """The caller's current CUDA stream on tensor's device as an int; 0 for CPU tensors."""
    if tensor.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(tensor.device).cuda_stream


def rows_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """tensor itself when its last dimension has stride 1 (the kernels take any other strides),
    else a contiguous copy."""
    if tensor.shape[-1] <= 1 or tensor.stride(-1) == 1:
        return tensor
    return tensor.contiguous()


def writes_into(name: str, mutates: tuple[str, ...]) -> Callable:
    """Decorator: the function as the custom op ``vidllm::<name>``, which returns nothing and
    only writes into its arguments ``mutates`` (buffers the caller allocated); its fake
    implementation therefore does nothing."""

    def define(function: Callable[..., None]):
        op = torch.library.custom_op(f"vidllm::{name}", mutates_args=mutates)(function)
        op.register_fake(_returns_nothing)
        return op

    return define


def _returns_nothing(*args, **kwargs) -> None:
    return None
