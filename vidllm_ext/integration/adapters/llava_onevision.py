"""LLaVA-OneVision: one video per sample, 1-D position ids.

A video of F frames becomes F steps of (ceil(P / 2))^2 tokens (P = image_size // patch_size
patches per side, pooled 2x2), followed by one image_newline token that is always kept.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from vidllm_ext.integration.adapters.common import find_multimodal_model, input_ids_of
from vidllm_ext.integration.sequence import CompactedLayout, VideoSegment

# Pixel method: the frame area under each token, area-resampled to this many pixels per side.
PIXELS_PER_TOKEN_SIDE = 8
# SigLIP's normalization, for frames given as uint8 without a processor.
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


class LlavaOneVisionAdapter:
    def __init__(self, model):
        self.multimodal = find_multimodal_model(model, "vision_tower")
        self.language_model = self.multimodal.language_model
        self.video_token_id = model.config.video_token_index
        self.vision_token_ids = (model.config.video_token_index, model.config.image_token_index)
        vision = model.config.vision_config
        self.image_size = vision.image_size
        self.grid_side = math.ceil(vision.image_size // vision.patch_size / 2)
        self.supports_streaming = True
        self.temporal_patch = 1  # frames are encoded one by one

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
            # A whole video ends with its newline token; a stream chunk has none.
            has_newline = columns.numel() % self.tokens_per_frame != 0
            steps, remainder = divmod(columns.numel() - has_newline, self.tokens_per_frame)
            if remainder or steps < 1:
                raise ValueError(
                    f"sample {sample} holds {columns.numel()} video tokens; LLaVA-OneVision "
                    f"expects frames * {self.tokens_per_frame} (+ 1, the trailing newline)"
                )
            pixels = self._pixel_patches(captured, video, steps) if method == "pixel" else None
            frame_columns = columns[: steps * self.tokens_per_frame]
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

    # ---- streaming -----------------------------------------------------------------------

    def tokens_per_video(self, grid: list[int]) -> int:
        return grid[0] * self.tokens_per_frame

    def stream_chunk_ids(self, grid: list[int], video_open: bool, first_step: int, timestamp_ids):
        return [self.video_token_id] * self.tokens_per_video(grid)

    def video_steps(self, pixels: torch.Tensor, grid: list[int]) -> list[torch.Tensor]:
        """Processed frames ``[1, f, 3, S, S]`` cut into their temporal steps (one frame each)."""
        return list(pixels.split(1, dim=1))

    def join_steps(self, steps: list[torch.Tensor], grid: list[int]) -> tuple[torch.Tensor, list]:
        """Consecutive steps of :meth:`video_steps` as one chunk with its grid."""
        return torch.cat(steps, dim=1), [len(steps), grid[1], grid[2]]

    def stream_close_ids(self, video_open: bool) -> list[int]:
        return []

    def stream_close_embedding(self, video_open: bool):
        """The newline that ends a video, fed once when the stream's video closes."""
        return self.multimodal.image_newline if video_open else None

    @contextlib.contextmanager
    def stream_video_call(self, pixels: torch.Tensor, grid: list[int]):
        """Forward arguments for one chunk of a stream, valid inside this context.

        A chunk has no newline token (one newline ends the whole video, fed when the stream
        closes it), but the model puts one after every video's features: older releases (5.12)
        append ``image_newline`` in the forward, newer ones inside ``get_video_features``. For
        this one forward ``get_video_features`` hands over exactly the chunk's features: it drops
        a newline it appended itself, or else lends the chunk's last feature to
        ``image_newline`` (restored on exit) for the forward to append. Which of the two applies
        is read from the feature count, not from the version."""
        multimodal = self.multimodal
        encoder = vars(multimodal).get("get_video_features")  # the patch's recording wrapper
        newline = multimodal.image_newline
        saved = newline.detach().clone()
        expected = grid[0] * self.tokens_per_frame

        def chunk_features(*args, **kwargs):
            encoded = (encoder or type(multimodal).get_video_features.__get__(multimodal))(
                *args, **kwargs
            )
            pooled = encoded.pooler_output
            if pooled.shape[1] == expected:  # the forward appends image_newline after this
                with torch.no_grad():
                    newline.copy_(pooled[0, -1])
            elif pooled.shape[1] != expected + 1:
                raise RuntimeError(
                    f"StreamingSession: LLaVA-OneVision's get_video_features gave "
                    f"{pooled.shape[1]} features for a chunk of {expected} video tokens; this "
                    f"transformers release lays out video features in a way vidllm_ext does not "
                    f"know"
                )
            encoded.pooler_output = pooled[:, :-1]
            return encoded

        multimodal.get_video_features = chunk_features
        try:
            yield {"pixel_values_videos": pixels}
        finally:
            with torch.no_grad():
                newline.copy_(saved)
            if encoder is not None:
                multimodal.get_video_features = encoder
            else:
                del multimodal.get_video_features

    def positions(self, token_ids: list[int], video_grids: list[list[int]]) -> torch.Tensor:
        return torch.arange(len(token_ids), device=self.multimodal.device)[None]

    def processed_video(self, pixels: torch.Tensor, grid) -> tuple[torch.Tensor, list[int]]:
        """Processed frames [f, 3, S, S] or [1, f, 3, S, S]."""
        pixels = pixels.reshape(1, -1, *pixels.shape[-3:])
        return pixels, [pixels.shape[1], self.grid_side, self.grid_side]

    def preprocess_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """uint8 [f, H, W, 3] -> ([1, f, 3, S, S] resized and normalized, grid [f, side, side])."""
        video = frames.permute(0, 3, 1, 2).float().div(255)
        size = (self.image_size, self.image_size)
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGE_MEAN, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, device=frames.device).view(1, 3, 1, 1)
        return self.processed_video((video - mean) / std, None)
