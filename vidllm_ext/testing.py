"""Test utilities: run the CUDA kernels on the host emulator of the CUDA execution model.

A build made with ``VIDLLM_CUDA_EMULATION=1 pip install .`` also compiles every CUDA source of
the package with the host C++ compiler against an emulation layer (csrc/cuda_emulator). Under
:func:`emulated_cuda`, every op given CPU tensors runs its CUDA launcher and kernels (the same
grids, blocks, shared memory and kernel code) on that emulator instead of its CPU twin, so the
CUDA code executes, and is checked for divergent barriers, incomplete warp collectives and
invalid launches, on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from vidllm_ext._extension import _C

SCHEDULES = ("forward", "reverse", "random")

_lock = threading.Lock()
_active: list[tuple[int, int]] = []  # the (schedule, seed) of each open context, innermost last


def emulation_compiled() -> bool:
    """Whether this installation compiled the CUDA kernels for the emulator."""
    return bool(_C.build_info()["cuda_emulation"])


@contextlib.contextmanager
def emulated_cuda(schedule: str = "forward", seed: int = 0) -> Iterator[None]:
    """Runs every op given CPU tensors on the CUDA emulator while the context is open.

    Args:
        schedule: the order in which the blocks of a launch run, and in which the threads of a
            block start and resume after each ``__syncthreads`` or warp collective: "forward"
            (ascending index), "reverse" (descending) or "random" (a shuffle drawn from
            ``seed``). A kernel whose result depends on the schedule has a race.
        seed: seeds the "random" schedule; the same seed replays the same orders.

    The switch is process-wide (like a device, it applies to ops called from any thread);
    contexts nest, and leaving one restores the enclosing one. Outside every context nothing
    changes: CPU tensors run the CPU twins. Kernel faults (a barrier not reached by every live
    thread, a warp collective whose mask names a lane that exited or did not arrive, a launch
    over the hardware's limits) raise RuntimeError naming the kernel and the fault.

    Raises:
        ValueError: unknown schedule or negative seed.
        RuntimeError: this installation was built without ``VIDLLM_CUDA_EMULATION=1``.

    Example:
        >>> import torch, vidllm_ext
        >>> from vidllm_ext.testing import emulated_cuda
        >>> x = torch.randn(4, 16, 64)
        >>> with emulated_cuda(schedule="random", seed=1):
        ...     scores = vidllm_ext.ops.dtd_scores(x)  # runs the CUDA kernel on the CPU
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if not emulation_compiled():
        raise RuntimeError(
            "vidllm_ext.testing.emulated_cuda needs a build with the CUDA emulator; reinstall "
            "with `VIDLLM_CUDA_EMULATION=1 pip install .` (see csrc/cuda_emulator/README.md)"
        )
    setting = (SCHEDULES.index(schedule), seed % 2**64)
    with _lock:
        _active.append(setting)
        _C._set_cuda_emulation(True, *setting)
    try:
        yield
    finally:
        with _lock:
            _active.remove(setting)
            if _active:
                _C._set_cuda_emulation(True, *_active[-1])
            else:
                _C._set_cuda_emulation(False, 0, 0)


def emulation_enabled() -> bool:
    """Whether ops on CPU tensors run on the CUDA emulator right now."""
    return bool(_C._cuda_emulation_enabled())


__all__ = ["SCHEDULES", "emulated_cuda", "emulation_compiled", "emulation_enabled"]
