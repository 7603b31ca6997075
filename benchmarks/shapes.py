"""The benchmark shapes and input generators: one definition, shared with ``vidllm_ext.bench``
(the installed ``vidllm-ext bench`` command) by re-exporting it here."""

from vidllm_ext.bench.shapes import (
    DEFAULT_SHAPES,
    SHAPES,
    Shape,
    dtype_label,
    dtype_size,
    video_frames,
)

__all__ = ["DEFAULT_SHAPES", "SHAPES", "Shape", "dtype_label", "dtype_size", "video_frames"]
