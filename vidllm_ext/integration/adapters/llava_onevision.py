"""LLaVA-OneVision: one video per sample, 1-D position ids.

A video of F frames becomes F steps of (ceil(P / 2))^2 tokens (P = image_size // patch_size
patches per side, pooled 2x2), followed by one image_newline token that is always kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidllm_ext.integration.adapters.common import find_multimodal_model, input_ids_of
from vidllm_ext.integration.sequence import CompactedLayout
from vidllm_ext.integration.token_drop import VideoSegment

# Pixel method: the frame area under each token, area-resampled to this many pixels per side.
PIXELS_PER_TOKEN_SIDE = 8


class LlavaOneVisionAdapter:
    def __init__(self, model):
        self.multimodal = find_multimodal_model(model, "vision_tower")
        self.language_model = self.multimodal.language_model
        self.video_token_id = model.config.video_token_index
        vision = model.config.vision_config
        self.grid_side = math.ceil(vision.image_size // vision.patch_size / 2)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_side**2

    def capture(self, args: tuple, kwargs: dict) -> dict:
        return {
            "input_ids": input_ids_of(args, kwargs),
            "pixel_values_videos": kwargs.get("pixel_values_videos"),
        }

    def video_encoder_inputs(self, args: tuple, kwargs: dict) -> dict:
        """What get_video_features(pixel_values_videos, ...) was given."""
        return {"pixel_values_videos": args[0] if args else kwargs.get("pixel_values_videos")}

    def video_segments(self, captured: dict, method: str) -> list[VideoSegment]:
        input_ids = captured["input_ids"]
        if input_ids is None:
            return []
        segments, video = [], 0
        for sample in range(input_ids.shape[0]):
            columns = (input_ids[sample] == self.video_token_id).nonzero().flatten()
            if columns.numel() == 0:
                continue
            steps, remainder = divmod(columns.numel() - 1, self.tokens_per_frame)
            if remainder or steps < 1:
                raise ValueError(
                    f"sample {sample} holds {columns.numel()} video tokens; LLaVA-OneVision "
                    f"expects frames * {self.tokens_per_frame} + 1 (the trailing newline)"
                )
            pixels = self._pixel_patches(captured, video, steps) if method == "pixel" else None
            frame_columns = columns[:-1]  # the last one is the newline token
            segments.append(
                VideoSegment(sample, frame_columns, steps, self.tokens_per_frame, pixels)
            )
            video += 1
        return segments

    def _pixel_patches(self, captured: dict, video: int, steps: int) -> torch.Tensor:
        """float32 [steps, tokens, 3 * side^2]: each token's share of its frame."""
        pixels = captured["pixel_values_videos"]
        if pixels is None:
            raise ValueError("DTD method 'pixel' needs pixel_values_videos in the forward call")
        frames = pixels[video].float()  # [frames, channels, height, width]
        side = self.grid_side * PIXELS_PER_TOKEN_SIDE
        frames = F.interpolate(frames, size=(side, side), mode="area")
        patches = F.unfold(frames, PIXELS_PER_TOKEN_SIDE, stride=PIXELS_PER_TOKEN_SIDE)
        return patches.transpose(1, 2)[:steps]

    def default_position_ids(self, embeds: torch.Tensor) -> torch.Tensor:
        batch, length = embeds.shape[:2]
        return torch.arange(length, device=embeds.device).expand(batch, -1)

    def compact_side_inputs(self, kwargs: dict, keep: torch.Tensor, layout: CompactedLayout):
        """LLaVA-OneVision passes no per-token side inputs to its language model."""
