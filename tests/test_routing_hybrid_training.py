"""Routed fine-tuning on the newer families (issue 18, section 2): 30 AdamW steps of the synthetic
video-caption task, as test_routing_training.py runs them on the older ones."""

import pytest
from support.caption_task import routers, tiny_model
from support.models import NEW_FAMILIES
from support.training import (
    LAYERS,
    ROUTED_LAYERS,
    ROUTER_NORM,
    assert_loss_falls,
    fine_tune,
    one_thread,  # noqa: F401 (an autouse fixture: one torch thread in this module)
)

import vidllm_ext

pytest.importorskip("transformers")

# The routers start at zero. Qwen3.5-MoE's full-attention router (layer 3) learns the least:
# after the 30 steps its norm is 0.016 on transformers 5.12 and 0.023 on 5.25 (the dense
# families' ROUTER_NORM, 0.02, sat between the two); a router that does not learn stays at 0.
HYBRID_ROUTER_NORM = ROUTER_NORM / 2


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_routed_fine_tuning_lowers_the_loss_and_trains_the_routers(family):
    """5 decoder layers; "interleaved" routes 1 and 3 (on Qwen3.5: a linear-attention layer and
    the only full-attention one)."""
    model = vidllm_ext.patch(
        tiny_model(family, layers=LAYERS), mod=vidllm_ext.MoDConfig(keep_ratio=0.2)
    )
    found = routers(model)
    assert len(found) == len(ROUTED_LAYERS)
    losses = fine_tune(model, family)
    assert_loss_falls(losses)
    for name, router in found.items():
        weight = router.weight.detach()
        assert weight.abs().min() > 0, f"{name}: some weights never moved off zero"
        assert weight.norm() > HYBRID_ROUTER_NORM, f"{name}: moved only {weight.norm():.2e}"
    stats = vidllm_ext.last_stats(model, "mod")
    assert stats.routed_layers == ROUTED_LAYERS
    assert all(0 < after < stats.video_tokens_before for after in stats.video_tokens_after)
    if family != "qwen3_5":  # MoE: the skipped tokens skipped the experts of both layers
        skipped = sum(stats.video_tokens_before - after for after in stats.video_tokens_after)
        assert stats.expert_assignments_skipped == 2 * skipped
