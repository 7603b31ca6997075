"""vidllm-ext: CUDA and C++ kernels that make video LLMs cheaper to run and train.

- :mod:`vidllm_ext.ops`: the kernels as torch ops (frame-difference token drop, ...).
- :mod:`vidllm_ext.reference`: plain-PyTorch oracles with the same semantics.
- :class:`DTDStream`: token drop over a live stream, chunk by chunk.
- :func:`patch` / :func:`unpatch`: drop (:class:`DTDConfig`), merge (:class:`MergeConfig`) and
  route (:class:`MoDConfig`) video tokens inside a HuggingFace video LLM.
- :class:`PackedKVCache` / :class:`KVQuantConfig`: a KV cache that really stores 1-2 bits.
- :func:`build_info`: what this installation compiled.
"""

from vidllm_ext import ops, reference
from vidllm_ext._version import __version__
from vidllm_ext.build import build_info
from vidllm_ext.dtd_stream import DTDStream
from vidllm_ext.integration import (
    DTDConfig,
    DTDStats,
    MergeConfig,
    MergeStats,
    MoDConfig,
    RoutingStats,
    TechniqueInactive,
    cache_kwargs,
    last_stats,
    patch,
    unpatch,
)
from vidllm_ext.kv_cache import PackedKVCache
from vidllm_ext.kv_config import KVQuantConfig
from vidllm_ext.kv_types import PackedKeys, PackedValues
from vidllm_ext.results import DTDResult
from vidllm_ext.streaming import StreamingSession

__all__ = [
    "DTDConfig",
    "DTDResult",
    "DTDStats",
    "DTDStream",
    "KVQuantConfig",
    "MergeConfig",
    "MergeStats",
    "MoDConfig",
    "PackedKVCache",
    "PackedKeys",
    "PackedValues",
    "RoutingStats",
    "StreamingSession",
    "TechniqueInactive",
    "__version__",
    "build_info",
    "cache_kwargs",
    "last_stats",
    "ops",
    "patch",
    "reference",
    "unpatch",
]
