"""The kernels as torch ops (``torch.ops.vidllm.*`` underneath), CPU and CUDA."""

from vidllm_ext.ops.frame_drop import (
    compact_tokens,
    compact_tokens_into,
    drop_redundant_tokens,
    dtd_keep_mask,
    dtd_scores,
)
from vidllm_ext.ops.kv_attention import packed_attention
from vidllm_ext.ops.kv_quant import (
    dequantize_keys,
    dequantize_values,
    quantize_keys,
    quantize_values,
)
from vidllm_ext.ops.kv_quant_pack import pack_bits, pack_trits, unpack_bits, unpack_trits
from vidllm_ext.ops.routing import (
    gather_rows,
    routed_update,
    scatter_add_rows,
    select_routed_tokens,
    topk_per_segment,
    topk_per_segment_into,
)
from vidllm_ext.ops.token_merge import (
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
    "dequantize_keys",
    "dequantize_values",
    "drop_redundant_tokens",
    "dtd_keep_mask",
    "dtd_scores",
    "hierarchical_merge",
    "merge_wavg",
    "pack_bits",
    "pack_trits",
    "proportional_attention_bias",
    "quantize_keys",
    "quantize_values",
    "unmerge",
    "unpack_bits",
    "unpack_trits",
]
__all__ += [
    "gather_rows",
    "routed_update",
    "scatter_add_rows",
    "select_routed_tokens",
    "topk_per_segment",
    "topk_per_segment_into",
]
__all__ += ["packed_attention"]
