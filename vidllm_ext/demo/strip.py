"""Which video tokens frame-difference token drop keeps, and a PNG strip of a clip's frames with
the dropped tokens greyed out (``vidllm-ext demo``).

Example:
    >>> keep = token_keep_mask(model, inputs, DTDConfig(0.9))  # bool [steps, tokens per step]
    >>> save_strip(clip.frames, keep, "demo_strip.png")
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from vidllm_ext.contracts.frame_drop import DTDConfig
from vidllm_ext.ops import dtd_keep_mask

GREY_SHARE = 0.75  # how far a dropped token's pixels fade towards mid-grey


def token_keep_mask(model, inputs: dict, dtd: DTDConfig) -> torch.Tensor:
    """bool ``[steps, tokens per step]``: the tokens ``patch(model, dtd=dtd)`` keeps for the one
    video of ``inputs`` (a Qwen2/2.5-VL model's ``pixel_values_videos`` and ``video_grid_thw``),
    from the same features it compares: the LLM input embeddings (``feature``) or the pixel
    patches under each token (``pixel``). Call it on an unpatched model."""
    pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    steps = int(grid[0, 0])
    if dtd.method == "feature":
        with torch.no_grad():
            encoded = model.model.get_video_features(pixels, grid)
        features = torch.cat(list(getattr(encoded, "pooler_output", encoded)))
    else:
        merge = model.config.vision_config.spatial_merge_size
        features = pixels.reshape(-1, merge * merge * pixels.shape[-1])
    features = features.reshape(steps, -1, features.shape[-1]).float()
    return dtd_keep_mask(features, dtd.threshold, method=dtd.method, mode=dtd.mode)


def save_strip(frames, keep_mask: torch.Tensor, path, frames_per_step: int = 2) -> Path:
    """Writes the frames (uint8 ``[f, H, W, 3]``) side by side, 2 white pixels apart, each token's
    square (a ``sqrt(tokens)``-per-side grid over the frame) faded to grey where ``keep_mask`` is
    False, as an RGB PNG (written here: no plotting library needed)."""
    frames = np.asarray(frames)
    steps, tokens = keep_mask.shape
    side = round(tokens**0.5)
    count, height, width = frames.shape[:3]
    gap = 2
    strip = np.full((height, count * (width + gap) - gap, 3), 255, dtype=np.uint8)
    rows = np.minimum(np.arange(height) * side // height, side - 1)
    columns = np.minimum(np.arange(width) * side // width, side - 1)
    for index in range(count):
        step = min(index // frames_per_step, steps - 1)
        dropped = ~keep_mask[step].reshape(side, side).cpu().numpy()
        faded = dropped[rows][:, columns][..., None]
        image = frames[index].astype(np.float32)
        image = image * (1 - GREY_SHARE * faded) + 128 * GREY_SHARE * faded
        left = index * (width + gap)
        strip[:, left : left + width] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    Path(path).write_bytes(png_bytes(strip))
    return Path(path)


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB uint8 ``[H, W, 3]`` image as PNG file bytes (8-bit truecolor, no filtering)."""
    height, width = image.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )
