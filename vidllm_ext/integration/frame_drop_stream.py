"""Frame-difference token drop over a live stream, one chunk of steps at a time."""

from __future__ import annotations

import torch

from vidllm_ext import ops
from vidllm_ext.contracts import frame_drop as check
from vidllm_ext.contracts.frame_drop import DTDResult


class DTDStream:
    """Applies :func:`vidllm_ext.ops.drop_redundant_tokens` to a stream pushed in chunks.

    Each chunk's first step is compared with the last step of the previous chunk, and
    ``kept_index`` counts over the whole stream, so pushing a video in chunks of any sizes gives
    exactly the result of one call on the whole video.

    Example:
        >>> stream = vidllm_ext.DTDStream(0.9)
        >>> for chunk in chunks:                  # each [f, tokens, dim]
        ...     result = stream.push(chunk)       # result.kept_index is stream-global
    """

    def __init__(self, threshold: float, *, method: str = "feature", mode: str = "absolute"):
        self.method = check.check_choice(method, check.DTD_METHODS, "method")
        self.mode = check.check_choice(mode, check.DTD_MODES, "mode")
        self.threshold = check.check_dtd_threshold(threshold, self.method, self.mode)
        self.reset()

    def reset(self) -> None:
        """Forgets the stream: the next push starts a new video (its step 0 is kept whole)."""
        self._last_step: torch.Tensor | None = None
        self.steps_seen = 0

    def push(self, chunk: torch.Tensor) -> DTDResult:
        """chunk: ``[f, tokens, dim]`` (f may be 0). Returns the chunk's DTDResult with
        ``kept_index`` offset by the tokens of every earlier step."""
        chunk = check.check_frames(chunk)
        if self._last_step is not None:
            self._check_matches_stream(chunk)
        result = ops.drop_redundant_tokens(
            chunk, self.threshold, method=self.method, mode=self.mode, prev=self._last_step
        )
        offset = self.steps_seen * chunk.shape[1]
        if chunk.shape[0] > 0:
            # A copy: callers often reuse their frame buffer for the next chunk.
            self._last_step = chunk[-1].clone()
            self.steps_seen += chunk.shape[0]
        return result._replace(kept_index=result.kept_index + offset)

    def _check_matches_stream(self, chunk: torch.Tensor) -> None:
        last = self._last_step
        if (
            chunk.shape[1:] != last.shape
            or chunk.dtype != last.dtype
            or chunk.device != last.device
        ):
            raise ValueError(
                f"chunk: expected [f, {last.shape[0]}, {last.shape[1]}] {last.dtype} on "
                f"{last.device} like the stream's earlier chunks, got {list(chunk.shape)} "
                f"{chunk.dtype} on {chunk.device}; call reset() to start a new stream"
            )
