"""model_type -> adapter. One small adapter per family, found by the model's config."""

from __future__ import annotations

from vidllm_ext.integration.adapters.llava_onevision import LlavaOneVisionAdapter
from vidllm_ext.integration.adapters.qwen_vl import QwenVLAdapter

ADAPTERS = {
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": QwenVLAdapter,
    "qwen2_vl": QwenVLAdapter,
    "llava_onevision": LlavaOneVisionAdapter,
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model):
    """The adapter for model's family; ValueError listing the supported types otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"vidllm_ext.patch: unsupported model type {model_type!r} "
            f"({type(model).__name__}); supported: {', '.join(supported_model_types())}"
        )
    return ADAPTERS[model_type](model)
