"""A self-contained demonstration of frame-difference token drop on a synthetic clip."""

from __future__ import annotations

import time

import torch

from vidllm_ext.dtd_stream import DTDStream

PATCH = 14  # Qwen2.5-VL's vision patch size


def synthetic_clip(steps: int, height: int = 224, width: int = 224, seed: int = 0) -> torch.Tensor:
    """uint8 [steps, height, width, 3]: a textured static background with a square moving across
    it, the kind of scene where most patches do not change from frame to frame."""
    generator = torch.Generator().manual_seed(seed)
    background = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    frames = background.expand(steps, height, width, 3).clone()
    side = height // 5
    for step in range(steps):
        top = (step * 5) % (height - side)
        left = (step * 9) % (width - side)
        frames[step, top : top + side, left : left + side] = torch.tensor(
            [255, 40, 40], dtype=torch.uint8
        )
    return frames


def patchify(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [steps, H, W, 3] -> float32 [steps, patches, 3 * PATCH * PATCH] in [0, 1]."""
    steps, height, width, _ = frames.shape
    grid_h, grid_w = height // PATCH, width // PATCH
    patches = frames[:, : grid_h * PATCH, : grid_w * PATCH].float().div_(255)
    patches = patches.reshape(steps, grid_h, PATCH, grid_w, PATCH, 3).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(steps, grid_h * grid_w, 3 * PATCH * PATCH)


def run_demo(steps: int = 64, device: str | None = None, threshold: float = 0.9) -> int:
    """Streams a synthetic clip through DTDStream in chunks of 8 frames and prints the savings."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    features = patchify(synthetic_clip(steps)).to(device)
    # Warm-up: the first custom-op call imports torch._dynamo, a one-time cost of ~1 s.
    DTDStream(threshold).push(features[:2])
    stream = DTDStream(threshold, method="feature")
    kept_total, start = 0, time.perf_counter()
    for first in range(0, steps, 8):
        kept_total += stream.push(features[first : first + 8]).kept.shape[0]
    if features.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    total = features.shape[0] * features.shape[1]
    print(f"clip: {steps} frames of {features.shape[1]} patches on {device}")
    print(
        f"kept {kept_total} of {total} tokens, dropped {1 - kept_total / total:.1%} "
        f"(cosine > {threshold}) in {elapsed * 1e3:.1f} ms"
    )
    return 0
