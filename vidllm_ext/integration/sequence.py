"""Where a batch's video tokens are (:class:`VideoSegment`, which adapters produce and every
technique reads), and shortening a batch of token sequences to the columns that survive,
left-padded.

Model-agnostic: adapters decide which columns to keep; this module moves embeddings, position ids,
per-token side inputs and the attention mask to the compacted layout, and widens later decode
masks back onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class VideoSegment:
    """One video of one sample: its token columns in (step, position) order.

    Attributes:
        sample: batch row.
        columns: int64 ``[steps * tokens]`` sequence columns of the video's tokens.
        steps: temporal steps.
        tokens: tokens per step (fixed spatial positions).
        pixels: float ``[steps, tokens, patch]``: the pixel patch under each token (pixel method).
        previous: ``[tokens, dim]`` features of the step before the first (a live stream's last
            step), or None: then the first step is kept whole.
        frames: set by :func:`drop_video_tokens`: the ``[steps, tokens, dim]`` features compared.
    """

    sample: int
    columns: torch.Tensor
    steps: int
    tokens: int
    pixels: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    frames: torch.Tensor | None = None


@dataclass
class VideoTokenStats:
    """The video tokens of a batch before and after a stage that removes some (the base of
    ``DTDStats`` and ``MergeStats``); ``samples`` holds the batch row of each video, in the order
    of the stage's per-video lists."""

    video_tokens_before: int = 0
    video_tokens_after: int = 0
    samples: list = field(default_factory=list)

    @property
    def removed_fraction(self) -> float:
        """Fraction of the video tokens the stage removed (0 when there were none)."""
        before = self.video_tokens_before
        return 0.0 if before == 0 else 1.0 - self.video_tokens_after / before


@dataclass
class CompactedLayout:
    """Where every column of the shortened batch comes from.

    Attributes:
        source_column: int64 ``[batch, new_length]``, the original column of each new column (0 on
            padding, which the mask hides).
        attention_mask: int64 ``[batch, new_length]``, 1 on surviving tokens, 0 on left padding.
        original_length: the sequence length before compaction.
    """

    source_column: torch.Tensor
    attention_mask: torch.Tensor
    original_length: int

    @staticmethod
    def from_keep(keep: torch.Tensor) -> CompactedLayout:
        """keep: bool ``[batch, length]``. Survivors stay in order, right-aligned (left padding).
        Reads the longest survivor count on the host once."""
        batch, length = keep.shape
        counts = keep.sum(1)
        new_length = int(counts.max()) if batch > 0 else 0
        destination = keep.cumsum(1) - 1 + (new_length - counts)[:, None]
        rows = torch.arange(batch, device=keep.device)[:, None].expand(batch, length)[keep]
        columns = torch.arange(length, device=keep.device).expand(batch, length)[keep]
        source = torch.zeros(batch, new_length, dtype=torch.long, device=keep.device)
        mask = torch.zeros(batch, new_length, dtype=torch.long, device=keep.device)
        source[rows, destination[keep]] = columns
        mask[rows, destination[keep]] = 1
        return CompactedLayout(source, mask, length)

    def gather(self, tensor: torch.Tensor, sequence_dim: int) -> torch.Tensor:
        """Moves ``tensor`` (batch at ``sequence_dim - 1``, sequence at ``sequence_dim``) to the
        compacted layout. Works for embeddings ``[B, L, D]`` (dim 1) and position ids
        ``[R, B, L]`` (dim 2)."""
        index = self.source_column
        for _ in range(sequence_dim - 1):
            index = index.unsqueeze(0)
        for _ in range(tensor.dim() - sequence_dim - 1):
            index = index.unsqueeze(-1)
        shape = list(tensor.shape)
        shape[sequence_dim] = index.shape[sequence_dim]
        return tensor.gather(sequence_dim, index.to(tensor.device).expand(shape))

    def decode_mask(self, attention_mask: torch.Tensor | None, kv_length: int) -> torch.Tensor:
        """The 2-D mask of a later step over the compacted cache, ``[batch, kv_length]``.

        ``attention_mask``: the mask ``generate`` grows over the original sequence,
        ``[batch, original_length + new]``, or None: ``generate`` drops an all-ones mask, but the
        compacted prefill may hold left padding all the same.
        """
        prefill = self.attention_mask
        if attention_mask is None:
            later = prefill.new_ones(prefill.shape[0], kv_length - prefill.shape[1])
            return torch.cat([prefill, later], dim=1)
        prefill = prefill.to(device=attention_mask.device, dtype=attention_mask.dtype)
        return torch.cat([prefill, attention_mask[:, self.original_length :]], dim=1)


class TechniqueInactive(RuntimeError):
    """A configured technique could not take effect on this call; raised instead of silently
    running the unpatched computation."""


def require_video_layout(technique: str, input_ids, video_token_id: int, segments: list) -> None:
    """Raises :class:`TechniqueInactive` when ``input_ids`` hold video tokens but no video
    segment was found for them (the patch never saw their grids or pixels)."""
    if segments or input_ids is None:
        return
    video_tokens = int((input_ids == video_token_id).sum())
    if video_tokens:
        raise TechniqueInactive(
            f"{technique}: this forward holds {video_tokens} video tokens, but the patch never saw "
            "their layout (video grids / pixel inputs of the multimodal call), so it cannot take "
            "effect; refusing to run the unpatched computation silently. This usually means the "
            "installed transformers passes videos in a way this vidllm_ext does not know: please "
            "report it with the transformers version"
        )
