"""The kernels as torch ops (``torch.ops.vidllm.*`` underneath), CPU and CUDA."""

from vidllm_ext.ops.dtd import (
    compact_tokens,
    compact_tokens_into,
    drop_redundant_tokens,
    dtd_keep_mask,
    dtd_scores,
)
from vidllm_ext.ops.merge import (
    bipartite_soft_matching,
    hierarchical_merge,
    merge_wavg,
    proportional_attention_bias,
    unmerge,
)

__all__ = [
    "bipartite_soft_matching",
    "compact_tokens",
    "compact_tokens_into",
    "drop_redundant_tokens",
    "dtd_keep_mask",
    "dtd_scores",
    "hierarchical_merge",
    "merge_wavg",
    "proportional_attention_bias",
    "unmerge",
]
