"""Routed (mod=) tiny models: router weights that break ties, and a left-padded two-video batch."""

import torch

from support.models import SyntheticVideo

ROUTER = "vidllm_router"


def two_videos(family):
    """Two samples with different video lengths (LLaVA's batch stacks equal-length videos, so
    there the prompts differ) and different prompt lengths: a left-padded batch."""
    second = 4 if family == "llava_onevision" else 2
    return [SyntheticVideo(seed=1), SyntheticVideo(steps=second, seed=2)], [3, 9]


def randomize_routers(model, seed=0):
    """Distinct router scores (zero-initialized routers tie every token)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ROUTER in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
