"""The benchmark shapes and input generators: one definition, shared with ``vidllm_ext.bench``
(the installed ``vidllm-ext bench`` command) by re-exporting it here."""

import math
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

# ---- layer-skip routing (issue 7) ------------------------------------------------------------
# A routed layer's view of one sequence: `steps` temporal steps of `tokens_per_step` vision
# tokens each (the segments), `text_tokens` text tokens, hidden width `dim`.


@dataclass(frozen=True)
class RoutingShape:
    """One sequence entering a routed decoder layer, and the fraction of vision tokens kept."""

    name: str
    steps: int
    tokens_per_step: int
    text_tokens: int
    dim: int
    dtype: torch.dtype
    keep_ratio: float
    about: str

    @property
    def video_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.text_tokens

    @property
    def selected(self) -> int:
        """Rows the routed layer processes: every text token and ceil(keep_ratio * n) per step."""
        kept_per_step = min(self.tokens_per_step, math.ceil(self.keep_ratio * self.tokens_per_step))
        return self.text_tokens + self.steps * kept_per_step

    @property
    def label(self) -> str:
        """``"tokens x dim"``, e.g. ``"4224x3584"``."""
        return f"{self.tokens}x{self.dim}"


ROUTING_SHAPES: dict[str, RoutingShape] = {
    shape.name: shape
    for shape in (
        RoutingShape(
            "qwen2.5-vl-7b",
            16,
            256,
            128,
            3584,
            torch.bfloat16,
            0.2,
            "Qwen2.5-VL-7B LLM width, 16 temporal steps x 256 vision tokens + 128 text tokens "
            "(issue 7's training shape), keep 0.2",
        ),
        RoutingShape(
            "long-video",
            256,
            256,
            128,
            3584,
            torch.bfloat16,
            0.2,
            "Qwen2.5-VL-7B LLM width, 256 temporal steps x 256 vision tokens + 128 text, keep 0.2",
        ),
        RoutingShape(
            "cpu",
            16,
            256,
            128,
            1024,
            torch.float32,
            0.2,
            "CPU-sized: 16 steps x 256 vision tokens + 128 text, float32, width 1024, keep 0.2",
        ),
    )
}
ROUTING_DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "cuda": ("qwen2.5-vl-7b", "long-video"),
}
__all__ += ["ROUTING_DEFAULT_SHAPES", "ROUTING_SHAPES", "RoutingShape"]
