"""Token-drop augmentation for :mod:`vidllm_ext.demo.train`: in some rows of a batch, the video
tokens that frame-difference token drop would remove are hidden from attention (attention mask
0) while every token keeps its M-RoPE position, which is what a DTD-patched forward computes for
the tokens it keeps. The model so learns to answer from the tokens DTD keeps, the way
TimeChat-Online's model is trained on token-dropped streams.

A share ``feature_share`` of the rows (0 by default) hides what feature DTD
(``DTDConfig(threshold)``, a threshold drawn from 0.8-0.99) drops, from the model's own video
features at that step; the others pick from the pixels under each token (its change from the
same token one step earlier): every unchanged token (pixel DTD), or the least-changed 50-90% of
each step (relative DTD, which also hides some moving tokens). The first step is always kept.

Example:
    >>> batch = hide_dropped_tokens(model, batch, rows=[0, 3], rng=random.Random(0))
"""

from __future__ import annotations

import random

import torch

from vidllm_ext.ops import dtd_keep_mask

FEATURE_THRESHOLDS = (0.8, 0.99)
STATIC_BELOW = 1e-3  # mean |difference| of normalized pixels: an unchanged token


def token_changes(pixels: torch.Tensor, grid: list[int], merge: int) -> torch.Tensor:
    """float32 [steps - 1, tokens per step]: mean |difference| of each token's pixel patches
    from the same token one step earlier (pixel rows in the Qwen layout, one video)."""
    steps = grid[0]
    tokens = pixels.reshape(steps, -1, merge * merge * pixels.shape[-1])
    return (tokens[1:] - tokens[:-1]).abs().mean(-1)


def hidden_tokens(changes: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """bool [steps, tokens per step], True where a token is hidden (step 0 never)."""
    if rng.random() < 0.5:
        later = changes < STATIC_BELOW
    else:
        count = int(changes.shape[1] * rng.uniform(0.5, 0.9))
        order = changes.argsort(dim=1, stable=True)
        later = torch.zeros_like(changes, dtype=torch.bool)
        later.scatter_(1, order[:, :count], True)
    return torch.cat([torch.zeros_like(later[:1]), later])


def hide_dropped_tokens(
    model, batch: dict, rows: list[int], rng: random.Random, feature_share: float = 0.0
) -> dict:
    """``batch`` (one video per row, rows in video order) with explicit ``position_ids`` and
    the video tokens of ``rows`` that DTD would drop masked out."""
    if not rows:
        return batch
    config = model.config
    input_ids, grids = batch["input_ids"], batch["video_grid_thw"]
    is_video = input_ids == config.video_token_id
    positions, _ = model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=batch["mm_token_type_ids"],
        video_grid_thw=grids,
        attention_mask=batch["attention_mask"],
    )
    mask = batch["attention_mask"].clone()
    patches = grids.prod(-1).tolist()
    starts = [sum(patches[:index]) for index in range(len(patches))]
    merge = config.vision_config.spatial_merge_size
    features = None
    for row in rows:
        steps = int(grids[row, 0])
        if feature_share and rng.random() < feature_share:
            if features is None:
                with torch.no_grad():
                    encoded = model.model.get_video_features(batch["pixel_values_videos"], grids)
                features = list(getattr(encoded, "pooler_output", encoded))
            threshold = rng.uniform(*FEATURE_THRESHOLDS)
            tokens = features[row].reshape(steps, -1, features[row].shape[-1]).float()
            hidden = ~dtd_keep_mask(tokens, threshold)
        else:
            pixels = batch["pixel_values_videos"][starts[row] : starts[row] + patches[row]]
            hidden = hidden_tokens(token_changes(pixels, grids[row].tolist(), merge), rng)
        video_positions = is_video[row].nonzero().squeeze(1)
        mask[row, video_positions[hidden.flatten()]] = 0
    return dict(batch, attention_mask=mask, position_ids=positions)
