"""Realistic benchmark shapes and video-like inputs for them.

Inputs imitate a video: every token position has a base vector, and each step redraws the
position's noise around it at a per-position scale. Static positions (small scale) stay close to
the previous step and are redundant; moving positions (large scale) are not. Scales are
log-uniform, so a fixed threshold drops a realistic 50-80% of the tokens. Generation is seeded,
so every run sees the same inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    """Frames ``[steps, tokens, dim]`` of ``dtype``, as one model at one scale produces them."""

    name: str
    steps: int
    tokens: int
    dim: int
    dtype: torch.dtype
    about: str

    @property
    def label(self) -> str:
        """``"steps x tokens x dim"``, e.g. ``"64x256x1024"``."""
        return f"{self.steps}x{self.tokens}x{self.dim}"

    @property
    def frame_bytes(self) -> int:
        """Bytes of the frames tensor."""
        return self.steps * self.tokens * self.dim * dtype_size(self.dtype)


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            "timechat-online",
            508,
            256,
            3584,
            torch.bfloat16,
            "TimeChat-Online scale: 1016 frames at 1 fps on Qwen2.5-VL-7B, two frames per "
            "temporal step, LLM width",
        ),
        Shape("vision-tower", 64, 256, 1280, torch.bfloat16, "Qwen2.5-VL vision-tower width"),
        Shape("cpu", 64, 256, 1024, torch.float32, "CPU-sized float32 features"),
    )
}
# What a run measures when no shapes are named.
DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "cuda": ("timechat-online", "vision-tower"),
}

# (low, high) of the log-uniform per-position noise scale, relative to the base. Feature bases are
# standard normal: cosine to the previous step is about 1 / (1 + scale^2), so 0.9 drops scales
# below 1/3. Pixel bases are uniform in [0, 1]: mean |difference| is about 1.13 * scale.
NOISE_SCALES = {"feature": (0.05, 1.0), "pixel": (0.005, 0.2)}


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``.

    Example:
        >>> dtype_size(torch.bfloat16)
        2
    """
    return torch.empty((), dtype=dtype).element_size()


def dtype_label(dtype: torch.dtype) -> str:
    """Short dtype name for tables: ``"f32"``, ``"f16"``, ``"bf16"``.

    Example:
        >>> dtype_label(torch.bfloat16)
        'bf16'
    """
    return {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]


def video_frames(
    shape: Shape, *, kind: str = "feature", device: str | torch.device = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-like ``(frames, prev)`` for ``shape``, a chunk of a stream and the step before it.

    Args:
        shape: the size and dtype to generate.
        kind: ``"feature"`` (standard-normal bases, for ``method="feature"``) or ``"pixel"``
            (bases uniform in [0, 1] and values clamped there, for ``method="pixel"``).
        device: where to generate (on CUDA the whole generation runs there).
        seed: the generator seed; the same seed gives the same tensors.

    Returns:
        ``frames`` ``[steps, tokens, dim]`` and ``prev`` ``[tokens, dim]``, both contiguous, of
        ``shape.dtype``.

    Example:
        >>> frames, prev = video_frames(SHAPES["cpu"])
        >>> vidllm_ext.ops.dtd_keep_mask(frames, 0.9, prev=prev).float().mean()  # kept: ~0.35
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    sizes = (shape.tokens, shape.dim)
    if kind == "feature":
        base = torch.randn(sizes, generator=generator, device=device)
    else:
        base = torch.rand(sizes, generator=generator, device=device)
    low, high = NOISE_SCALES[kind]
    scale = torch.empty((shape.tokens, 1), device=device)
    scale.uniform_(math.log(low), math.log(high), generator=generator).exp_()
    steps = torch.empty((shape.steps + 1, *sizes), dtype=shape.dtype, device=device)
    for step in steps:  # one step at a time: float32 temporaries stay one step large
        noisy = torch.randn(sizes, generator=generator, device=device).mul_(scale).add_(base)
        step.copy_(noisy if kind == "feature" else noisy.clamp_(0.0, 1.0))
    return steps[1:], steps[0]
