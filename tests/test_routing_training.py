"""Fine-tuning with layer-skip routing (issue 7, section 4): 30 AdamW steps of a synthetic
video-caption task on tiny models; the loss falls and the routers learn."""

import pytest
import torch
from support.caption_task import caption_batch, routers, tiny_model
from support.training import (
    LAYERS,
    ROUTED_LAYERS,
    assert_loss_falls,
    assert_routed_fine_tuning_learns,
    fine_tune,
    one_thread,  # noqa: F401 (an autouse fixture: one torch thread in this module)
    routed_tiny_model,
)

import vidllm_ext

pytest.importorskip("transformers")

FAMILIES = ["qwen2_5_vl", "llava_onevision"]


@pytest.mark.parametrize("family", FAMILIES)
def test_routed_fine_tuning_lowers_the_loss_and_trains_the_routers(family):
    model = routed_tiny_model(family)
    found = routers(model)
    prefix = next(iter(found)).rsplit(".layers.", 1)[0]
    assert sorted(found) == [f"{prefix}.layers.{i}.vidllm_router" for i in ROUTED_LAYERS]
    assert all(not router.weight.any() for router in found.values())  # zero-initialized
    assert_routed_fine_tuning_learns(model, family)


def test_dense_fine_tuning_lowers_the_loss():
    model = vidllm_ext.patch(tiny_model("qwen2_5_vl", layers=LAYERS))
    assert not routers(model)
    assert_loss_falls(fine_tune(model, "qwen2_5_vl"))


def test_a_routed_last_layer_gets_no_router_gradient_from_caption_labels():
    """With 4 layers "interleaved" routes the last one (3). Its gate scales only the video
    tokens' own updates, which reach nothing but the logits at video positions (label -100), and
    which tokens it keeps is a top-k choice: its router's gradient is exactly zero, while the
    router of layer 1 learns."""
    model = vidllm_ext.patch(tiny_model("qwen2_5_vl", layers=4), mod=vidllm_ext.MoDConfig())
    model(**caption_batch("qwen2_5_vl", [0, 1, 2])).loss.backward()
    found = routers(model)
    assert found["model.language_model.layers.1.vidllm_router"].weight.grad.abs().max() > 0
    assert not found["model.language_model.layers.3.vidllm_router"].weight.grad.any()


def test_routing_changes_the_training_computation():
    """Control: the routed run is not the dense run under another name."""
    dense = fine_tune(vidllm_ext.patch(tiny_model("qwen2_5_vl")), "qwen2_5_vl", steps=2)
    routed_model = vidllm_ext.patch(tiny_model("qwen2_5_vl"), mod=vidllm_ext.MoDConfig())
    routed = fine_tune(routed_model, "qwen2_5_vl", steps=2)
    assert routed[0] != dense[0]


def test_gate_none_gives_the_routers_no_gradient():
    """With gate "none" a router only ranks tokens (a top-k index carries no gradient): freeze
    it, or give DistributedDataParallel find_unused_parameters=True."""
    model = vidllm_ext.patch(tiny_model("qwen2_5_vl"), mod=vidllm_ext.MoDConfig(gate="none"))
    model(**caption_batch("qwen2_5_vl", [0, 1])).loss.backward()
    assert routers(model)
    for router in routers(model).values():
        assert router.weight.grad is None or not router.weight.grad.any()
    assert model.lm_head.weight.grad is not None


def test_trained_routers_save_and_load_with_the_state_dict():
    family = "qwen2_5_vl"
    config = vidllm_ext.MoDConfig(keep_ratio=0.2)
    trained = vidllm_ext.patch(tiny_model(family), mod=config)
    fine_tune(trained, family, steps=3)
    state = trained.state_dict()
    assert [key for key in state if "vidllm_router" in key]

    fresh = vidllm_ext.patch(tiny_model(family, seed=1), mod=config)
    fresh.load_state_dict(state)  # strict: the router keys match
    batch = caption_batch(family, [2, 0], seed=7)
    with torch.no_grad():
        expected = trained.eval()(**batch).logits
        actual = fresh.eval()(**batch).logits
    assert torch.equal(actual, expected)

    vidllm_ext.unpatch(fresh)
    with pytest.raises(RuntimeError, match="vidllm_router"):  # unpatched: no router to load into
        fresh.load_state_dict(state)
