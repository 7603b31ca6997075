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

# Sub-2-bit KV cache kernels: one layer's keys or values per call, as rows x tokens x head_dim.
# Qwen2.5-VL-7B: batch 1, 4 KV heads, head_dim 128, 4096 tokens quantized per call.
KV_SHAPES = {"qwen2.5-vl-7b": (1 * 4, 4096, 128)}
