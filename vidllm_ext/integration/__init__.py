"""Drop-in patching of HuggingFace video LLMs (the layer above vidllm_ext.ops)."""

import importlib

from vidllm_ext.contracts.frame_drop import DTDConfig
from vidllm_ext.contracts.routing import MoDConfig
from vidllm_ext.contracts.token_merge import MergeConfig

# The names below need transformers; they are imported on first use, so that the modules of this
# package that do not (frame_drop_stream, sequence) import without it.
_LAZY = {
    "DTDStats": "vidllm_ext.integration.frame_drop",
    "MergeStats": "vidllm_ext.integration.token_merge",
    "RoutingStats": "vidllm_ext.integration.routing_context",
    "TechniqueInactive": "vidllm_ext.integration.sequence",
    "cache_kwargs": "vidllm_ext.integration.compat",
    "last_stats": "vidllm_ext.integration.patching",
    "patch": "vidllm_ext.integration.patching",
    "supported_model_types": "vidllm_ext.integration.registry",
    "unpatch": "vidllm_ext.integration.patching",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vidllm_ext.integration' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DTDConfig",
    "DTDStats",
    "MergeConfig",
    "MergeStats",
    "MoDConfig",
    "RoutingStats",
    "TechniqueInactive",
    "cache_kwargs",
    "last_stats",
    "patch",
    "supported_model_types",
    "unpatch",
]
