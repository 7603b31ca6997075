"""Result types of token merging, shared by the ops and the reference (no computation here)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class MergePlan(NamedTuple):
    """How bipartite soft matching merges ``[B, T, ·]`` tokens into ``[B, T - r, ·]``.

    Tokens after the ``protected`` ones alternate between set A (even offsets) and set B (odd
    offsets); the ``r`` A tokens most similar to their partners merge into them. Outputs keep the
    surviving tokens (protected, unmerged A, all of B) in ascending original order. Every tensor
    lives on the metric's device.

    Attributes:
        slot: int64 ``[B, T]``, the output slot every input token ended in (a merged A token:
            its destination's slot).
        kept_index: int64 ``[B, T - r]``, the input token each output slot keeps (ascending).
        source_offsets: int64 ``[B, T - r + 1]``, CSR offsets: output slot ``s`` received the A
            tokens ``source_index[b, source_offsets[b, s]:source_offsets[b, s + 1]]``.
        source_index: int64 ``[B, r]``, the merged A tokens grouped by destination slot,
            ascending within a group.
        partner: int64 ``[B, |A|]``, each A token's most similar B token (an index into set B:
            B token ``j`` is token ``protected + 2 j + 1``); -1 when B is empty.
        score: float32 ``[B, |A|]``, that cosine similarity (NaN when B is empty).
        r: merges per row, after capping at ``floor((T - protected) / 2)``.
        protected: leading tokens that took no part.
    """

    slot: Tensor
    kept_index: Tensor
    source_offsets: Tensor
    source_index: Tensor
    partner: Tensor
    score: Tensor
    r: int
    protected: int

    @property
    def tokens(self) -> int:
        """T, the input tokens per row."""
        return self.slot.shape[1]

    @property
    def merged_tokens(self) -> int:
        """T - r, the output tokens per row."""
        return self.kept_index.shape[1]


class MergeResult(NamedTuple):
    """Outcome of :func:`~vidllm_ext.ops.hierarchical_merge` over ``tokens [F, N, D]``.

    Attributes:
        tokens: ``[K, D]`` merged features in segment order, tokens' dtype; ``K = S * M`` when
            every segment holds at least ``M = tokens_per_segment`` tokens.
        sizes: float32 ``[K]``, how many input tokens each merged token stands for.
        source_index: int64 ``[K]``, the flat index ``f * N + n`` of each merged token's
            representative (the destination that survived every round): take its position ids.
        segment: int64 ``[K]``, the segment of each merged token (frames
            ``[s * frames_per_segment, (s + 1) * frames_per_segment)``).
    """

    tokens: Tensor
    sizes: Tensor
    source_index: Tensor
    segment: Tensor
