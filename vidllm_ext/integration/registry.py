"""model_type -> adapter. One small adapter per family, found by the model's config.

Adapters never import a family's transformers classes: they find the roles (vision tower,
language model, decoder layers) on the instance. A family the installed transformers does not
have gets an error naming the release that added it, never an import error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from vidllm_ext.integration.adapters.llava_onevision import LlavaOneVisionAdapter
from vidllm_ext.integration.adapters.qwen_vl import QwenVLAdapter


@dataclass(frozen=True)
class Family:
    """A supported model family: its adapter and where transformers keeps its classes."""

    adapter: type
    module: str  # transformers.models.<module>
    added_in: str  # the transformers release that added the family
    # Decoder: "dense", "moe" (sparse expert MLPs) or "hybrid" (linear + full attention layers).
    decoder: str = "dense"


FAMILIES = {
    "qwen2_vl": Family(QwenVLAdapter, "qwen2_vl", "4.45"),
    "qwen2_5_vl": Family(QwenVLAdapter, "qwen2_5_vl", "4.49"),
    "qwen3_vl": Family(QwenVLAdapter, "qwen3_vl", "4.57"),
    "qwen3_vl_moe": Family(QwenVLAdapter, "qwen3_vl_moe", "4.57", decoder="moe"),
    "qwen3_5": Family(QwenVLAdapter, "qwen3_5", "5.2", decoder="hybrid"),
    "qwen3_5_moe": Family(QwenVLAdapter, "qwen3_5_moe", "5.2", decoder="hybrid+moe"),
    "llava_onevision": Family(LlavaOneVisionAdapter, "llava_onevision", "4.45"),
}
# Kept for callers that read the table as model_type -> adapter class.
ADAPTERS = {model_type: family.adapter for model_type, family in FAMILIES.items()}


def supported_model_types() -> list[str]:
    """Every model type vidllm_ext.patch serves (some may need a newer transformers)."""
    return sorted(FAMILIES)


def family_available(model_type: str) -> bool:
    """Whether the installed transformers has the family's model classes."""
    family = FAMILIES[model_type]
    return importlib.util.find_spec(f"transformers.models.{family.module}") is not None


def require_family(model_type: str) -> Family:
    """The family of ``model_type``; ValueError when it is unknown or the installed transformers
    predates it (naming the release that added it)."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model type {model_type!r}; supported: "
            f"{', '.join(supported_model_types())}"
        )
    if not family_available(model_type):
        import transformers

        raise ValueError(
            f"model type {model_type!r} needs transformers >= {FAMILIES[model_type].added_in} "
            f"(the release that added it); transformers {transformers.__version__} is installed"
        )
    return FAMILIES[model_type]


def adapter_for(model):
    """The adapter for model's family; ValueError listing the supported types otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"vidllm_ext.patch: unsupported model type {model_type!r} "
            f"({type(model).__name__}); supported: {', '.join(supported_model_types())}"
        )
    return FAMILIES[model_type].adapter(model)
