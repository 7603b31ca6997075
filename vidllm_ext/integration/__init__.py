"""Drop-in patching of HuggingFace video LLMs (the layer above vidllm_ext.ops)."""

from vidllm_ext.contracts.frame_drop import DTDConfig
from vidllm_ext.contracts.routing import MoDConfig
from vidllm_ext.contracts.token_merge import MergeConfig
from vidllm_ext.integration.compat import cache_kwargs
from vidllm_ext.integration.frame_drop import DTDStats
from vidllm_ext.integration.patching import last_stats, patch, unpatch
from vidllm_ext.integration.registry import supported_model_types
from vidllm_ext.integration.routing_context import RoutingStats
from vidllm_ext.integration.sequence import TechniqueInactive
from vidllm_ext.integration.token_merge import MergeStats

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
