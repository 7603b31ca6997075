"""Deprecations our own code triggers become errors, wherever the warning is attributed.

transformers' deprecation shims warn with a stacklevel that points into transformers, so a
``filterwarnings`` entry keyed on our module never sees a deprecated call vidllm_ext makes. This
wraps ``warnings.warn`` and walks the stack from the warning outward, skipping the frames of the
libraries in between (transformers, torch, the standard library): if the first frame left is
vidllm_ext's, the call was ours and the warning is raised as an error.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import warnings
from contextlib import contextmanager

import vidllm_ext

PACKAGE_DIR = os.path.dirname(os.path.abspath(vidllm_ext.__file__)) + os.sep
STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
CATEGORIES = (DeprecationWarning, FutureWarning)


def is_library(filename: str) -> bool:
    """A frame of an installed library or the standard library (vidllm_ext itself excluded)."""
    if filename.startswith(PACKAGE_DIR):
        return False
    parts = filename.split(os.sep)
    return (
        filename.startswith(STDLIB_DIR)
        or "site-packages" in parts
        or "dist-packages" in parts
        or filename.startswith("<")
    )


def first_caller_file(frame) -> str | None:
    """The file of the first frame, from ``frame`` outward, that is not a library's."""
    while frame is not None:
        raw = frame.f_code.co_filename
        filename = raw if raw.startswith("<") else os.path.abspath(raw)
        if not is_library(filename):
            return filename
        frame = frame.f_back
    return None


def is_ours(frame) -> bool:
    filename = first_caller_file(frame)
    return filename is not None and filename.startswith(PACKAGE_DIR)


@contextmanager
def deprecations_from_vidllm_are_errors():
    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        if category is None and isinstance(message, Warning):
            category = type(message)
        deprecation = category is not None and issubclass(category, CATEGORIES)
        if deprecation and is_ours(sys._getframe(1)):
            raise category(f"raised from vidllm_ext's own call: {message}")
        return original(message, category, stacklevel + 1, source, **kwargs)

    warnings.warn = warn
    try:
        yield
    finally:
        warnings.warn = original
