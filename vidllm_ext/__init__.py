"""vidllm-ext: CUDA and C++ kernels that make video LLMs cheaper to run and train.

- :mod:`vidllm_ext.ops`: the kernels as torch ops (frame-difference token drop, ...).
- :mod:`vidllm_ext.reference`: plain-PyTorch oracles with the same semantics.
- :class:`DTDStream`: token drop over a live stream, chunk by chunk.
- :func:`patch` / :func:`unpatch`: drop (:class:`DTDConfig`), merge (:class:`MergeConfig`) and
  route (:class:`MoDConfig`) video tokens inside a HuggingFace video LLM.
- :class:`PackedKVCache` / :class:`KVQuantConfig`: a KV cache that really stores 1-2 bits.
- :func:`build_info`: what this installation compiled.
"""

from vidllm_ext import _moved, ops
from vidllm_ext._version import __version__
from vidllm_ext.build import build_info
from vidllm_ext.contracts.frame_drop import DTDConfig, DTDResult
from vidllm_ext.contracts.kv_quant import KVQuantConfig, PackedKeys, PackedValues
from vidllm_ext.contracts.routing import MoDConfig
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration import (
    DTDStats,
    MergeStats,
    RoutingStats,
    TechniqueInactive,
    cache_kwargs,
    last_stats,
    patch,
    unpatch,
)
from vidllm_ext.integration.frame_drop_stream import DTDStream
from vidllm_ext.integration.kv_quant_cache import PackedKVCache
from vidllm_ext.integration.streaming import StreamingSession

_moved.install()


def __getattr__(name: str):
    # vidllm_ext.reference (the oracles) is imported on first use: nothing in the package needs it.
    if name == "reference":
        import vidllm_ext.reference

        return vidllm_ext.reference
    raise AttributeError(f"module 'vidllm_ext' has no attribute {name!r}")


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
