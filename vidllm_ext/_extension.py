"""Loads the compiled module with an error that says how to fix a missing or broken build."""

from __future__ import annotations

from pathlib import Path

try:
    from vidllm_ext import _C
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    package_dir = Path(__file__).resolve().parent
    if (package_dir.parent / "setup.py").exists():
        hint = (
            f"Python imported vidllm_ext from the source tree at {package_dir.parent}, which has "
            "no compiled extension (with `python -m`, the current directory comes first on "
            "sys.path). Run from another directory, use the `vidllm-ext` command, or install "
            "in place with `pip install -e .`."
        )
    else:
        hint = "Reinstall the package with `pip install .` from the source tree."
    raise ImportError(
        f"vidllm_ext._C, the compiled kernels, could not be imported ({error}). {hint}"
    ) from error

__all__ = ["_C"]
