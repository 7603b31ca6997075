"""Plain-PyTorch oracles: the specification in code, used by tests, baselines and as fallback."""

from vidllm_ext.reference.frame_drop import (
    compact_tokens,
    drop_redundant_tokens,
    dtd_keep_mask,
    dtd_scores,
)
from vidllm_ext.reference.kv_attention import packed_attention
from vidllm_ext.reference.kv_quant_pack import pack_bits, pack_trits, unpack_bits, unpack_trits
from vidllm_ext.reference.routing import (
    gather_rows,
    routed_update,
    scatter_add_rows,
    select_routed_tokens,
    topk_per_segment,
)
from vidllm_ext.reference.token_merge import (
    bipartite_soft_matching,
    hierarchical_merge,
    merge_wavg,
    proportional_attention_bias,
    unmerge,
)
