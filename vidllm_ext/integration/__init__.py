"""Drop-in patching of HuggingFace video LLMs (the layer above vidllm_ext.ops)."""

from vidllm_ext.integration.config import DTDConfig
from vidllm_ext.integration.patching import last_stats, patch, unpatch
from vidllm_ext.integration.registry import supported_model_types
from vidllm_ext.integration.token_drop import DTDStats

__all__ = ["DTDConfig", "DTDStats", "last_stats", "patch", "supported_model_types", "unpatch"]
