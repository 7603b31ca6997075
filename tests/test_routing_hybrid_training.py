"""Routed fine-tuning on the newer families (issue 18, section 2): 30 AdamW steps of the synthetic
video-caption task, as test_routing_training.py runs them on the older ones."""

import pytest
from support.caption_task import routers
from support.models import NEW_FAMILIES
from support.training import (
    ROUTED_LAYERS,
    ROUTER_NORM,
    assert_routed_fine_tuning_learns,
    one_thread,  # noqa: F401 (an autouse fixture: one torch thread in this module)
    routed_tiny_model,
)

pytest.importorskip("transformers")

# The routers start at zero. Qwen3.5-MoE's full-attention router (layer 3) learns the least:
# after the 30 steps its norm is 0.016 on transformers 5.12 and 0.023 on 5.25 (the dense
# families' ROUTER_NORM, 0.02, sat between the two); a router that does not learn stays at 0.
HYBRID_ROUTER_NORM = ROUTER_NORM / 2


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_routed_fine_tuning_lowers_the_loss_and_trains_the_routers(family):
    """5 decoder layers; "interleaved" routes 1 and 3 (on Qwen3.5: a linear-attention layer and
    the only full-attention one)."""
    model = routed_tiny_model(family)
    assert len(routers(model)) == len(ROUTED_LAYERS)
    stats = assert_routed_fine_tuning_learns(model, family, HYBRID_ROUTER_NORM)
    if family != "qwen3_5":  # MoE: the skipped tokens skipped the experts of both layers
        skipped = sum(stats.video_tokens_before - after for after in stats.video_tokens_after)
        assert stats.expert_assignments_skipped == 2 * skipped
