"""The benchmark shapes of every family, and video-like inputs for them.

Each family has its shapes keyed by name (``<FAMILY>_SHAPES``) and the names a run measures when
none are given, per device (``<FAMILY>_DEFAULT_SHAPES``). Every family also has a ``tiny`` shape:
a smoke-test size (a run in seconds), not a realistic one. Every shape has a ``name``, an
``about`` (what it stands for) and ``elements`` (its size, by which ``--quick`` keeps the
smallest).

Video-like inputs: every token position has a base vector, and each step redraws the position's
noise around it at a per-position scale. Static positions (small scale) stay close to the previous
step and are redundant; moving positions (large scale) are not. Scales are log-uniform, so a fixed
threshold drops a realistic 50-80% of the tokens. Generation is seeded, so every run sees the same
inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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


class Sized:
    """A shape's table label and size, from ``sizes``: the sizes of the tensor it benchmarks."""

    sizes: tuple[int, ...]

    @property
    def label(self) -> str:
        """The sizes joined by ``x``, e.g. ``"64x256x1024"``."""
        return "x".join(map(str, self.sizes))

    @property
    def elements(self) -> int:
        """Elements of the benchmarked tensor (what ``--quick`` orders shapes by)."""
        return math.prod(self.sizes)


def by_name(*shapes):
    """The shapes keyed by their names."""
    return {shape.name: shape for shape in shapes}


# ---- frame_drop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameShape(Sized):
    """Frames ``[steps, tokens, dim]`` of ``dtype``, as one model at one scale produces them."""

    name: str
    steps: int
    tokens: int
    dim: int
    dtype: torch.dtype
    about: str

    @property
    def sizes(self) -> tuple[int, int, int]:
        """The frames tensor: ``(steps, tokens, dim)``."""
        return (self.steps, self.tokens, self.dim)


FRAME_DROP_SHAPES: dict[str, FrameShape] = by_name(
    FrameShape(
        "timechat-online",
        508,
        256,
        3584,
        torch.bfloat16,
        "TimeChat-Online scale: 1016 frames at 1 fps on Qwen2.5-VL-7B, two frames per "
        "temporal step, LLM width",
    ),
    FrameShape("vision-tower", 64, 256, 1280, torch.bfloat16, "Qwen2.5-VL vision-tower width"),
    FrameShape("cpu", 64, 256, 1024, torch.float32, "CPU-sized float32 features"),
    FrameShape("tiny", 4, 64, 64, torch.float32, "smoke-test size, not a realistic shape"),
)
FRAME_DROP_DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "cuda": ("timechat-online", "vision-tower"),
}

# (low, high) of the log-uniform per-position noise scale, relative to the base. Feature bases are
# standard normal: cosine to the previous step is about 1 / (1 + scale^2), so 0.9 drops scales
# below 1/3. Pixel bases are uniform in [0, 1]: mean |difference| is about 1.13 * scale.
NOISE_SCALES = {"feature": (0.05, 1.0), "pixel": (0.005, 0.2)}


def video_steps(
    steps: int,
    tokens: int,
    dim: int,
    dtype: torch.dtype,
    *,
    kind: str = "feature",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> torch.Tensor:
    """Video-like ``[steps, tokens, dim]`` of ``dtype``: a base per position, fresh noise per step.

    Args:
        kind: ``"feature"`` (standard-normal bases) or ``"pixel"`` (bases uniform in [0, 1] and
            values clamped there).
        device: where to generate (on CUDA the whole generation runs there).
        seed: the generator seed; the same seed gives the same tensor.

    Example:
        >>> video_steps(3, 16, 8, torch.float32).shape
        torch.Size([3, 16, 8])
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    sizes = (tokens, dim)
    if kind == "feature":
        base = torch.randn(sizes, generator=generator, device=device)
    else:
        base = torch.rand(sizes, generator=generator, device=device)
    low, high = NOISE_SCALES[kind]
    scale = torch.empty((tokens, 1), device=device)
    scale.uniform_(math.log(low), math.log(high), generator=generator).exp_()
    video = torch.empty((steps, *sizes), dtype=dtype, device=device)
    for step in video:  # one step at a time: float32 temporaries stay one step large
        noisy = torch.randn(sizes, generator=generator, device=device).mul_(scale).add_(base)
        step.copy_(noisy if kind == "feature" else noisy.clamp_(0.0, 1.0))
    return video


def video_frames(
    shape: FrameShape, *, kind: str = "feature", device: str | torch.device = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-like ``(frames, prev)`` for ``shape``, a chunk of a stream and the step before it.

    Returns:
        ``frames`` ``[steps, tokens, dim]`` and ``prev`` ``[tokens, dim]``, both contiguous, of
        ``shape.dtype`` (see :func:`video_steps` for ``kind``, ``device`` and ``seed``).

    Example:
        >>> frames, prev = video_frames(FRAME_DROP_SHAPES["cpu"])
        >>> vidllm_ext.ops.dtd_keep_mask(frames, 0.9, prev=prev).float().mean()  # kept: ~0.35
    """
    steps = video_steps(
        shape.steps + 1, shape.tokens, shape.dim, shape.dtype, kind=kind, device=device, seed=seed
    )
    return steps[1:], steps[0]


# ---- token_merge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeShape(Sized):
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
    def sizes(self) -> tuple[int, int, int]:
        """The video's tokens: ``(frames, tokens, dim)``."""
        return (self.frames, self.tokens, self.dim)


TOKEN_MERGE_SHAPES: dict[str, MergeShape] = by_name(
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
    MergeShape("tiny", 4, 32, 64, torch.float32, 2, 8, 4, "smoke-test size, not a realistic shape"),
)
TOKEN_MERGE_DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("longvlm",),
    "cuda": ("longvlm", "qwen2.5-vl-7b"),
}

# ---- routing ---------------------------------------------------------------------------------
# A routed layer's view of one sequence: `steps` temporal steps of `tokens_per_step` vision
# tokens each (the segments), `text_tokens` text tokens, hidden width `dim`.


class VideoSequence:
    """A sequence of ``steps`` temporal steps of ``tokens_per_step`` vision tokens each, and
    ``text_tokens`` text tokens."""

    steps: int
    tokens_per_step: int
    text_tokens: int

    @property
    def video_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def tokens(self) -> int:
        """Every token of the sequence, video and text."""
        return self.video_tokens + self.text_tokens


@dataclass(frozen=True)
class RoutingShape(Sized, VideoSequence):
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
    def selected(self) -> int:
        """Rows the routed layer processes: every text token and ceil(keep_ratio * n) per step."""
        kept_per_step = min(self.tokens_per_step, math.ceil(self.keep_ratio * self.tokens_per_step))
        return self.text_tokens + self.steps * kept_per_step

    @property
    def sizes(self) -> tuple[int, int]:
        """The hidden states: ``(tokens, dim)``."""
        return (self.tokens, self.dim)


ROUTING_SHAPES: dict[str, RoutingShape] = by_name(
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
    RoutingShape(
        "tiny", 4, 64, 16, 64, torch.float32, 0.2, "smoke-test size, not a realistic shape"
    ),
)
ROUTING_DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "cuda": ("qwen2.5-vl-7b", "long-video"),
}

# ---- kv_quant and kv_attention --------------------------------------------------------------


def outlier_channels(
    sizes: tuple[int, ...], device: torch.device | str, generator: torch.Generator
) -> torch.Tensor:
    """Keys-like float32: normal values times a per-channel (last axis) scale, log-uniform from
    0.1 to 30, so a few channels are outliers as in real keys.

    Example:
        >>> generator = torch.Generator().manual_seed(0)
        >>> outlier_channels((2, 16, 8), "cpu", generator).abs().amax((0, 1)).shape
        torch.Size([8])
    """
    scale = torch.empty(sizes[-1], device=device)
    scale.uniform_(math.log(0.1), math.log(30.0), generator=generator).exp_()
    return torch.randn(sizes, generator=generator, device=device) * scale


# ---- kv_quant --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVShape(Sized):
    """One layer's keys or values per call: ``[rows, tokens, head_dim]`` of ``dtype``."""

    name: str
    rows: int
    tokens: int
    head_dim: int
    dtype: torch.dtype
    about: str

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Keys or values: ``(rows, tokens, head_dim)``."""
        return (self.rows, self.tokens, self.head_dim)


KV_QUANT_SHAPES: dict[str, KVShape] = by_name(
    KVShape(
        "qwen2.5-vl-7b",
        1 * 4,
        4096,
        128,
        torch.bfloat16,
        "Qwen2.5-VL-7B: batch 1 x 4 KV heads, 4096 tokens quantized per call, head_dim 128",
    ),
    KVShape("tiny", 2, 128, 32, torch.bfloat16, "smoke-test size, not a realistic shape"),
)
KV_QUANT_DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("qwen2.5-vl-7b",),
    "cuda": ("qwen2.5-vl-7b",),
}

# ---- kv_attention ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeShape:
    """One decode step over a packed cache of ``tokens`` tokens, ``batch`` sequences (the heads
    are Qwen2.5-VL-7B's, fixed in :mod:`vidllm_ext.bench.kv_attention`)."""

    name: str
    tokens: int
    batch: int
    about: str

    @property
    def label(self) -> str:
        """``"B=batch T=tokens"``."""
        return f"B={self.batch} T={self.tokens}"

    @property
    def elements(self) -> int:
        """Cached tokens over the batch (what ``--quick`` orders shapes by)."""
        return self.tokens * self.batch


KV_ATTENTION_SHAPES: dict[str, DecodeShape] = by_name(
    *(
        DecodeShape(f"{tokens // 1024}k{suffix}", tokens, batch, f"{about}, batch {batch}")
        for batch, suffix in ((1, ""), (8, "-b8"))
        for tokens, about in (
            (4096, "a 4k-token cache"),
            (32768, "a 32k-token cache"),
            (131072, "a 128k-token cache (the GPU targets' length)"),
        )
    ),
    DecodeShape("tiny", 256, 1, "smoke-test size, not a realistic shape"),
)
KV_ATTENTION_DEFAULT_SHAPES: dict[str, tuple[str, ...]] = {
    "cpu": ("4k", "32k"),
    "cuda": ("4k", "32k", "128k", "4k-b8", "32k-b8", "128k-b8"),
}

# ---- every family, by technique name -------------------------------------------------------

SHAPES: dict[str, dict] = {
    "frame_drop": FRAME_DROP_SHAPES,
    "token_merge": TOKEN_MERGE_SHAPES,
    "routing": ROUTING_SHAPES,
    "kv_quant": KV_QUANT_SHAPES,
    "kv_attention": KV_ATTENTION_SHAPES,
}
DEFAULT_SHAPES: dict[str, dict[str, tuple[str, ...]]] = {
    "frame_drop": FRAME_DROP_DEFAULT_SHAPES,
    "token_merge": TOKEN_MERGE_DEFAULT_SHAPES,
    "routing": ROUTING_DEFAULT_SHAPES,
    "kv_quant": KV_QUANT_DEFAULT_SHAPES,
    "kv_attention": KV_ATTENTION_DEFAULT_SHAPES,
}
