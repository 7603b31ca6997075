"""The kernels as torch ops (``torch.ops.vidllm.*`` underneath), CPU and CUDA."""

from vidllm_ext.ops.dtd import (
    compact_tokens,
    compact_tokens_into,
    drop_redundant_tokens,
    dtd_keep_mask,
    dtd_scores,
)
from vidllm_ext.ops.routing import (
    gather_rows,
    routed_update,
    scatter_add_rows,
    select_routed_tokens,
    topk_per_segment,
    topk_per_segment_into,
)

__all__ = [
    "compact_tokens",
    "compact_tokens_into",
    "drop_redundant_tokens",
    "dtd_keep_mask",
    "dtd_scores",
]
__all__ += [
    "gather_rows",
    "routed_update",
    "scatter_add_rows",
    "select_routed_tokens",
    "topk_per_segment",
    "topk_per_segment_into",
]
