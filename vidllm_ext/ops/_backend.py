"""How the ops hand torch tensors to vidllm_ext._C: DLPack capsules plus the current stream."""

from __future__ import annotations

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
