"""Argument checks shared by the ops and the reference, so both raise the same exceptions.

They read only shapes, dtypes and Python values, so they also run on fake tensors while
``torch.compile`` traces. The C++ bindings repeat the checks for callers of ``vidllm_ext._C``.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# The kernels take int64 scalars: a larger Python int cannot reach them.
INT64_MAX = 2**63 - 1


def check_tensor(value: object, name: str) -> torch.Tensor:
    """A torch.Tensor with data (CPU or CUDA; a meta tensor has none for the kernels to read)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta":
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got a meta tensor")
    return value


def check_float_dtype(tensor: torch.Tensor, name: str, dtypes: tuple = FLOAT_DTYPES) -> None:
    if tensor.dtype not in dtypes:
        names = [str(dtype).removeprefix("torch.") for dtype in dtypes]
        expected = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise TypeError(f"{name}: expected dtype {expected}, got {tensor.dtype}")


def check_float_tensor(
    value: object, name: str, layout: str, dtypes: tuple = FLOAT_DTYPES
) -> torch.Tensor:
    """A tensor of one of ``dtypes`` with the dimensions ``layout`` names, e.g. "[rows, dim]"."""
    tensor = check_tensor(value, name)
    dims = layout.count(",") + 1
    if tensor.dim() != dims:
        raise ValueError(
            f"{name}: expected a {dims}-D tensor {layout}, got shape {list(tensor.shape)}"
        )
    check_float_dtype(tensor, name, dtypes)
    return tensor


def check_shape(tensor: torch.Tensor, name: str, shape: list[int], about: str = "") -> None:
    """Raises ValueError unless ``tensor`` has ``shape``; ``about`` says where ``shape`` comes
    from (e.g. "[steps, tokens] of frames")."""
    if list(tensor.shape) != list(shape):
        source = f" ({about})" if about else ""
        raise ValueError(f"{name}: expected shape {list(shape)}{source}, got {list(tensor.shape)}")


def check_device(tensor: torch.Tensor, name: str, device: torch.device, like: str = "") -> None:
    """Raises ValueError unless ``tensor`` is on ``device`` (the device of ``like``, if named)."""
    if tensor.device != device:
        source = f" like {like}" if like else ""
        raise ValueError(f"{name}: expected a tensor on {device}{source}, got {tensor.device}")


def check_choice(value: object, choices: tuple, name: str) -> str:
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def check_int(value: object, name: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """A Python int (not bool) in [minimum, maximum]; the kernels take int64 scalars."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if maximum != INT64_MAX and not minimum <= value <= maximum:
        raise ValueError(f"{name}: expected an integer in [{minimum}, {maximum}], got {value}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name}: expected an int <= 2^63 - 1, got {value}")
    return value


def ceil_div(n: int, k: int) -> int:
    """ceil(n / k) for ints, k >= 1: bytes holding n codes, groups covering n items."""
    return -(-n // k)
