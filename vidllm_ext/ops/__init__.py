"""The kernels as torch ops (``torch.ops.vidllm.*`` underneath), CPU and CUDA."""

from vidllm_ext.ops.dtd import (
    compact_tokens,
    compact_tokens_into,
    drop_redundant_tokens,
    dtd_keep_mask,
    dtd_scores,
)
from vidllm_ext.ops.kv import dequantize_keys, dequantize_values, quantize_keys, quantize_values
from vidllm_ext.ops.kv_pack import pack_bits, pack_trits, unpack_bits, unpack_trits

__all__ = [
    "compact_tokens",
    "compact_tokens_into",
    "dequantize_keys",
    "dequantize_values",
    "drop_redundant_tokens",
    "dtd_keep_mask",
    "dtd_scores",
    "pack_bits",
    "pack_trits",
    "quantize_keys",
    "quantize_values",
    "unpack_bits",
    "unpack_trits",
]
