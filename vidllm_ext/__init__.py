"""vidllm-ext: CUDA and C++ kernels that make video LLMs cheaper to run and train.

- :mod:`vidllm_ext.ops`: the kernels as torch ops (frame-difference token drop, ...).
- :mod:`vidllm_ext.reference`: plain-PyTorch oracles with the same semantics.
- :class:`DTDStream`: token drop over a live stream, chunk by chunk.
- :func:`patch` / :func:`unpatch`: drop (:class:`DTDConfig`), merge (:class:`MergeConfig`) and
  route (:class:`MoDConfig`) video tokens inside a HuggingFace video LLM.
- :class:`PackedKVCache` / :class:`KVQuantConfig`: a KV cache that really stores 1-2 bits.
- :func:`build_info`: what this installation compiled.
"""

import importlib

from vidllm_ext import _moved, ops
from vidllm_ext._version import __version__
from vidllm_ext.build import build_info
from vidllm_ext.contracts.frame_drop import DTDConfig, DTDResult
from vidllm_ext.contracts.kv_quant import KVQuantConfig, PackedKeys, PackedValues
from vidllm_ext.contracts.routing import MoDConfig
from vidllm_ext.contracts.token_merge import MergeConfig

_moved.install()

# Imported on first use: the HuggingFace integration needs transformers (the [hf] extra), which
# the ops do not; vidllm_ext.reference (the oracles) is needed by nothing in the package.
_LAZY = {
    "DTDStats": "vidllm_ext.integration.frame_drop",
    "DTDStream": "vidllm_ext.integration.frame_drop_stream",
    "MergeStats": "vidllm_ext.integration.token_merge",
    "PackedKVCache": "vidllm_ext.integration.kv_quant_cache",
    "RoutingStats": "vidllm_ext.integration.routing_context",
    "StreamingSession": "vidllm_ext.integration.streaming",
    "TechniqueInactive": "vidllm_ext.integration.sequence",
    "cache_kwargs": "vidllm_ext.integration.compat",
    "last_stats": "vidllm_ext.integration.patching",
    "patch": "vidllm_ext.integration.patching",
    "unpatch": "vidllm_ext.integration.patching",
}


def __getattr__(name: str):
    if name == "reference":
        return importlib.import_module("vidllm_ext.reference")
    if name not in _LAZY:
        raise AttributeError(f"module 'vidllm_ext' has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name])
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "transformers":
            raise
        raise ImportError(
            f"vidllm_ext.{name} needs transformers: pip install 'vidllm-ext[hf]'"
        ) from error
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | {"reference"})


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
