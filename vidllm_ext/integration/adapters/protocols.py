"""What a model family's adapter provides: the contract between patching and one HF family.

:class:`PatchAdapter` is what :func:`vidllm_ext.patch` needs for every technique;
:class:`StreamingAdapter` adds what :class:`vidllm_ext.StreamingSession` needs to feed a live
video chunk by chunk. ``integration/registry.py`` maps a ``config.model_type`` to an adapter class;
``tests/test_adapter_contract.py`` checks that every registered adapter satisfies both. README,
"Adding a model family", lists the steps.
"""

from __future__ import annotations

import contextlib
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from vidllm_ext.integration.sequence import CompactedLayout, VideoSegment


@runtime_checkable
class PatchAdapter(Protocol):
    """The seams of one model instance that patching hooks, and how its video tokens are laid out.

    Attributes:
        multimodal: the module whose forward receives ``input_ids`` and the pixel inputs (it has
            ``get_video_features``).
        language_model: the decoder stack fed ``inputs_embeds``; its ``config`` is the text config.
        video_token_id: the placeholder id of a video token in ``input_ids``.
        vision_token_ids: every id of the vision part of a prompt (video, image, start and end
            markers); salient-token selection leaves them out of the text.
        supports_streaming: whether the adapter is also a :class:`StreamingAdapter`.
    """

    multimodal: nn.Module
    language_model: nn.Module
    video_token_id: int
    vision_token_ids: tuple[int, ...]
    supports_streaming: bool

    def capture(self, args: tuple, kwargs: dict) -> dict:
        """The multimodal forward's inputs the decoder cannot see: ``input_ids`` and the video's
        pixels and grid, under the family's own keyword names."""

    def video_encoder_inputs(self, args: tuple, kwargs: dict) -> dict:
        """What ``get_video_features`` was called with, under the keys of :meth:`capture` (generate
        encodes videos before the forward and hands the forward only the features)."""

    def video_segments(self, captured: dict, method: str) -> list[VideoSegment]:
        """One :class:`VideoSegment` per video of each sample, its columns in (step, position)
        order; with ``method="pixel"`` each carries the pixel patch under each token."""

    def default_position_ids(self, embeds: torch.Tensor) -> torch.Tensor:
        """The position ids the decoder would compute for an unshortened ``embeds``."""

    def compact_side_inputs(self, kwargs: dict, keep: torch.Tensor, layout: CompactedLayout):
        """Moves the family's per-token decoder inputs besides embeddings and positions (e.g.
        Qwen3-VL's deepstack features and visual mask) to the compacted layout."""


@runtime_checkable
class StreamingAdapter(PatchAdapter, Protocol):
    """What a live stream needs besides patching: preprocessing frames, the prompt ids of each
    chunk, positions, and feeding one chunk's features to the model.

    Attributes:
        temporal_patch: frames per temporal step of the vision tower.
    """

    temporal_patch: int

    def preprocess_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """uint8 or float ``[frames, 3, H, W]`` -> the vision tower's pixels and their grid."""

    def processed_video(self, pixels: torch.Tensor, grid) -> tuple[torch.Tensor, list[int]]:
        """A video already preprocessed by the family's processor, checked: (pixels, grid)."""

    def video_steps(self, pixels: torch.Tensor, grid: list[int]) -> list[torch.Tensor]:
        """The pixels of each temporal step, so a chunk can be cut from a video."""

    def join_steps(self, steps: list[torch.Tensor], grid: list[int]) -> tuple[torch.Tensor, list]:
        """Inverse of :meth:`video_steps` for a run of steps: (pixels, grid)."""

    def tokens_per_video(self, grid: list[int]) -> int:
        """Video tokens the decoder receives for a video of this grid."""

    def stream_chunk_ids(self, grid: list[int], video_open: bool, first_step: int, timestamp_ids):
        """The prompt ids of one chunk: markers, timestamps and video placeholders."""

    def stream_close_ids(self, video_open: bool) -> list[int]:
        """Ids that close an open video block before a question."""

    def stream_close_embedding(self, video_open: bool):
        """The embedding appended after a chunk's features, if the family adds one."""

    def positions(self, token_ids: list[int], video_grids: list[list[int]]) -> torch.Tensor:
        """Position ids of a whole prompt (M-RoPE rows for Qwen-VL)."""

    def stream_video_call(
        self, pixels: torch.Tensor, grid: list[int]
    ) -> contextlib.AbstractContextManager:
        """A context manager during which the model's forward encodes exactly this chunk."""
