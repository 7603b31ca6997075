"""Loads the compiled module with an error that says how to fix a missing or broken build."""

from __future__ import annotations

try:
    from vidllm_ext import _C
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "vidllm_ext._C, the compiled kernels, could not be imported "
        f"({error}). Install the package with `pip install .` from the source tree (it builds "
        "the extension with CMake); an editable install needs `pip install -e .` again after a "
        "C++ change."
    ) from error

__all__ = ["_C"]
