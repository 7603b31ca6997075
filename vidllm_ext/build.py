"""What was compiled into this installation."""

from __future__ import annotations

from vidllm_ext._extension import _C


def build_info() -> dict:
    """Facts about the compiled module; never raises, also without a GPU or driver.

    Returns:
        dict with ``version``, ``git_commit``, ``cuda_compiled`` (bool), ``cuda_archs`` (list of
        CMake arch strings, e.g. ``["80-real", "90"]``: "-real" means machine code only, plain
        means machine code and PTX), ``cuda_runtime_version`` (str or None),
        ``device_count`` (GPUs the runtime sees, 0 without a driver), ``openmp`` (bool) and
        ``cuda_emulation`` (bool: the CUDA kernels were also compiled for the host emulator,
        see :func:`vidllm_ext.testing.emulated_cuda`).

    Example:
        >>> vidllm_ext.build_info()["cuda_compiled"]
        True
    """
    return dict(_C.build_info())
