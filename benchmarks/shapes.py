"""The benchmark shapes and input generators: one definition, shared with ``vidllm_ext.bench``
(the installed ``vidllm-ext bench`` command) by re-exporting it here."""

from dataclasses import dataclass

import torch

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
# ---- token merging (issue 6) ----------------------------------------------------------------


@dataclass(frozen=True)
class MergeShape:
    """One video's tokens ``[frames, tokens, dim]`` of ``dtype`` and its hierarchical merge."""

    name: str
    frames: int
    tokens: int
    dim: int
    dtype: torch.dtype
    frames_per_segment: int
    tokens_per_segment: int
    metric_chunks: int
    about: str

    @property
    def label(self) -> str:
        """``"frames x tokens x dim"``, e.g. ``"100x256x1024"``."""
        return f"{self.frames}x{self.tokens}x{self.dim}"


MERGE_SHAPES: dict[str, MergeShape] = {
    shape.name: shape
    for shape in (
        MergeShape(
            "longvlm",
            100,
            256,
            1024,
            torch.float32,
            10,
            30,
            16,
            "LongVLM: 100 frames x 256 CLIP ViT-L tokens, 10-frame segments -> 30 tokens each",
        ),
        MergeShape(
            "qwen2.5-vl-7b",
            64,
            256,
            3584,
            torch.bfloat16,
            10,
            64,
            16,
            "Qwen2.5-VL-7B: 64 temporal steps x 256 tokens at LLM width, 10-step segments -> "
            "64 tokens each",
        ),
    )
}
# What a merge run measures when no shapes are named.
DEFAULT_MERGE_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("longvlm",),
    "cuda": ("longvlm", "qwen2.5-vl-7b"),
}

__all__ += ["DEFAULT_MERGE_SHAPES", "MERGE_SHAPES", "MergeShape"]
