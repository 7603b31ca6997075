"""Which video tokens frame-difference token drop keeps, and a PNG strip of a clip's frames with
the dropped tokens greyed out (``vidllm-ext demo``).

Example:
    >>> keep = token_keep_mask(model, inputs, DTDConfig(0.9))  # bool [steps, tokens per step]
    >>> save_strip(clip.frames, keep, "demo_strip.png")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidllm_ext.integration.config import DTDConfig
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
    """Writes the frames (uint8 ``[f, H, W, 3]``) side by side, each token's square (a
    ``sqrt(tokens)``-per-side grid over the frame) faded to grey where ``keep_mask`` is False."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.asarray(frames)
    steps, tokens = keep_mask.shape
    side = round(tokens**0.5)
    count, height, width = frames.shape[:3]
    figure, axes = plt.subplots(1, count, figsize=(1.1 * count, 1.5), squeeze=False)
    for index, axis in enumerate(axes[0]):
        image = frames[index].astype(np.float32)
        step = min(index // frames_per_step, steps - 1)
        dropped = ~keep_mask[step].reshape(side, side).cpu().numpy()
        rows = np.minimum(np.arange(height) * side // height, side - 1)
        columns = np.minimum(np.arange(width) * side // width, side - 1)
        faded = dropped[rows][:, columns][..., None]
        image = image * (1 - GREY_SHARE * faded) + 128 * GREY_SHARE * faded
        axis.imshow(image.astype(np.uint8))
        axis.set_title(f"f{index}", fontsize=7)
        axis.axis("off")
    figure.suptitle("frames; greyed: video tokens dropped by DTD", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
