"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL (-MoE) and Qwen3.5 (-MoE): video tokens from video_grid_thw,
M-RoPE position ids.

A video of grid (t, h, w) patches becomes t temporal steps of (h / m) * (w / m) tokens (m the
spatial merge size), in (step, row, column) order. Qwen2/2.5-VL place a video's tokens in one run;
Qwen3-VL and Qwen3.5 interleave timestamp text between steps, so tokens are located by id, not by
run. The decoder (dense, MoE, hybrid linear attention) does not change where video tokens are.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from vidllm_ext.integration.adapters.common import (
    find_multimodal_model,
    input_ids_of,
    split_columns,
)
from vidllm_ext.integration.sequence import CompactedLayout, VideoSegment

# The Qwen2-VL processor's defaults (OpenAI CLIP normalization), for frames given as uint8.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
PER_STEP_BLOCK_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


class QwenVLAdapter:
    def __init__(self, model):
        self.multimodal = find_multimodal_model(model, "visual")
        self.language_model = self.multimodal.language_model
        config = model.config
        self.video_token_id = config.video_token_id
        self.vision_start_id = config.vision_start_token_id
        self.vision_end_id = getattr(config, "vision_end_token_id", None)
        vision_ids = (config.video_token_id, config.image_token_id, self.vision_start_id)
        self.vision_token_ids = tuple(i for i in (*vision_ids, self.vision_end_id) if i is not None)
        self.merge = config.vision_config.spatial_merge_size
        self.patch = config.vision_config.patch_size
        self.temporal_patch = config.vision_config.temporal_patch_size
        # Qwen3-VL and Qwen3.5 write every temporal step as its own block behind a timestamp text.
        self.per_step_blocks = config.model_type in PER_STEP_BLOCK_TYPES
        self.supports_streaming = True

    def capture(self, args: tuple, kwargs: dict) -> dict:
        return {
            "input_ids": input_ids_of(args, kwargs),
            "video_grid_thw": kwargs.get("video_grid_thw"),
            "pixel_values_videos": kwargs.get("pixel_values_videos"),
        }

    def video_encoder_inputs(self, args: tuple, kwargs: dict) -> dict:
        """What get_video_features(pixel_values_videos, video_grid_thw, ...) was given."""
        return {
            "pixel_values_videos": args[0] if args else kwargs.get("pixel_values_videos"),
            "video_grid_thw": args[1] if len(args) > 1 else kwargs.get("video_grid_thw"),
        }

    def video_segments(self, captured: dict, method: str) -> list[VideoSegment]:
        input_ids, grids = captured["input_ids"], captured["video_grid_thw"]
        if input_ids is None or grids is None:
            return []
        is_video = input_ids == self.video_token_id
        grids = [tuple(int(v) for v in grid) for grid in grids.tolist()]
        pixel_rows = self._pixel_rows(captured, grids, method)
        beams = self._rows_per_sample(is_video, grids)
        segments, video, first_video = [], 0, 0
        for sample in range(input_ids.shape[0]):
            if sample % beams:  # beam search: a copy of the previous row's videos
                video = first_video
            else:
                first_video = video
            columns = is_video[sample].nonzero().flatten()
            sizes = []
            while sum(sizes) < columns.numel() and video + len(sizes) < len(grids):
                steps, height, width = grids[video + len(sizes)]
                sizes.append(steps * height * width // self.merge**2)
            for video_columns in split_columns(columns, sizes, "video_grid_thw"):
                steps, height, width = grids[video]
                tokens = height * width // self.merge**2
                pixels = (
                    None if pixel_rows is None else pixel_rows[video].reshape(steps, tokens, -1)
                )
                segments.append(VideoSegment(sample, video_columns, steps, tokens, pixels))
                video += 1
        return segments

    def _rows_per_sample(self, is_video: torch.Tensor, grids: list) -> int:
        """Beam search repeats each sample's rows but not its video grids: how many times."""
        described = sum(t * h * w // self.merge**2 for t, h, w in grids)
        present = int(is_video.sum())
        if described and present != described and present % described == 0:
            copies = present // described
            if is_video.shape[0] % copies == 0:
                return copies
        return 1

    def _pixel_rows(self, captured: dict, grids: list, method: str):
        """Per video, its rows of pixel_values_videos: patch rows of one token are consecutive
        (the processor orders them for the spatial merge)."""
        if method != "pixel":
            return None
        pixels = captured["pixel_values_videos"]
        if pixels is None:
            raise ValueError("DTD method 'pixel' needs pixel_values_videos in the forward call")
        return list(pixels.split([t * h * w for t, h, w in grids]))

    def default_position_ids(self, embeds: torch.Tensor) -> torch.Tensor:
        batch, length = embeds.shape[:2]
        return torch.arange(length, device=embeds.device).view(1, 1, -1).expand(3, batch, -1)

    def compact_side_inputs(self, kwargs: dict, keep: torch.Tensor, layout: CompactedLayout):
        """Qwen3-VL's deepstack: visual features added in early decoder layers at the visual
        positions; they follow their tokens (rows in batch-major, column order)."""
        visual = kwargs.get("visual_pos_masks")
        if visual is None:
            return
        kept_rows = keep.to(visual.device)[visual]
        kwargs["visual_pos_masks"] = layout.gather(visual, 1) & layout.attention_mask.bool().to(
            visual.device
        )
        deepstack = kwargs.get("deepstack_visual_embeds")
        if deepstack is not None:
            kwargs["deepstack_visual_embeds"] = [e[kept_rows.to(e.device)] for e in deepstack]

    # ---- streaming -----------------------------------------------------------------------

    def stream_chunk_ids(self, grid: list[int], video_open: bool, first_step: int, timestamp_ids):
        """Token ids of a chunk of a streamed video: Qwen2/2.5-VL continue one block (opened by
        vision_start); Qwen3-VL writes each step as timestamp text + its own closed block."""
        tokens = grid[1] * grid[2] // self.merge**2
        if not self.per_step_blocks:
            opening = [] if video_open else [self.vision_start_id]
            return opening + [self.video_token_id] * (grid[0] * tokens)
        ids = []
        for step in range(first_step, first_step + grid[0]):
            ids += [*timestamp_ids(step), self.vision_start_id]
            ids += [self.video_token_id] * tokens + [self.vision_end_id]
        return ids

    @contextlib.contextmanager
    def stream_video_call(self, pixels: torch.Tensor, grid: list[int]):
        """Forward arguments that hand one chunk's pixels to the model."""
        yield {"pixel_values_videos": pixels, "video_grid_thw": torch.tensor([grid])}

    def processed_video(self, pixels: torch.Tensor, grid) -> tuple[torch.Tensor, list[int]]:
        """Already-processed pixel rows [steps * h * w, patch_dim] with their grid [steps, h, w]."""
        if grid is None:
            raise ValueError("processed pixel rows need video_grid_thw = [steps, h, w]")
        return pixels, [int(v) for v in torch.as_tensor(grid).flatten().tolist()]

    def stream_close_embedding(self, video_open: bool):
        return None

    def video_steps(self, pixels: torch.Tensor, grid: list[int]) -> list[torch.Tensor]:
        """Processed pixel rows cut into their temporal steps."""
        return list(pixels.split(grid[1] * grid[2]))

    def join_steps(self, steps: list[torch.Tensor], grid: list[int]) -> tuple[torch.Tensor, list]:
        """Consecutive steps of :meth:`video_steps` as one chunk with its grid."""
        return torch.cat(steps), [len(steps), grid[1], grid[2]]

    def stream_close_ids(self, video_open: bool) -> list[int]:
        """What ends the current video before text: Qwen2/2.5-VL's vision_end."""
        return [self.vision_end_id] if video_open and not self.per_step_blocks else []

    def tokens_per_video(self, grid: list[int]) -> int:
        steps, height, width = grid
        return steps * height * width // self.merge**2

    def positions(self, token_ids: list[int], video_grids: list[list[int]]) -> torch.Tensor:
        """int64 [3, 1, len(token_ids)]: the M-RoPE ids the model itself gives this sequence."""
        ids = torch.tensor([token_ids], device=self.multimodal.device)
        token_types = (ids == self.video_token_id).int() * 2
        grids = torch.tensor(video_grids, device=ids.device) if video_grids else None
        positions, _ = self.multimodal.get_rope_index(
            ids, mm_token_type_ids=token_types, video_grid_thw=grids
        )
        return positions

    def preprocess_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """uint8 [f, H, W, 3] (f a multiple of the temporal patch) -> (pixel rows
        [steps * h * w, 3 * temporal * patch^2], grid [steps, h, w]) in the Qwen processor's
        layout: resized to multiples of patch * merge, CLIP-normalized, the merge^2 patches of
        one token consecutive."""
        unit = self.patch * self.merge
        count, height, width, _ = frames.shape
        height, width = (
            max(unit, round(height / unit) * unit),
            max(unit, round(width / unit) * unit),
        )
        video = frames.permute(0, 3, 1, 2).float().div(255)
        video = F.interpolate(video, size=(height, width), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGE_MEAN, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, device=frames.device).view(1, 3, 1, 1)
        video = (video - mean) / std
        steps, grid_h, grid_w = (
            count // self.temporal_patch,
            height // self.patch,
            width // self.patch,
        )
        m, p = self.merge, self.patch
        video = video.reshape(steps, self.temporal_patch, 3, grid_h // m, m, p, grid_w // m, m, p)
        rows = video.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(steps * grid_h * grid_w, -1)
        return rows, [steps, grid_h, grid_w]
