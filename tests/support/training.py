"""Short fine-tuning runs on the synthetic caption task (tests/support/caption_task.py)."""

import pytest
import torch

import vidllm_ext
from support.caption_task import caption_batch, routers, tiny_model

STEPS = 30
# Mean loss of the last 5 steps over the first 5. Measured on this task over 4 seeds and the 4
# families: 0.15-0.38 routed, 0.16-0.37 dense; a model that learns nothing stays near 1.
LOSS_RATIO = 0.5
# Router weight norm after the 30 steps: measured 0.08-0.49 (same runs); they start at 0.
ROUTER_NORM = 0.02
# "interleaved" on 5 decoder layers routes 1 and 3; the last layer stays dense (see
# test_a_routed_last_layer_gets_no_router_gradient_from_caption_labels).
LAYERS, ROUTED_LAYERS = 5, (1, 3)


def fine_tune(model, family: str, steps: int = STEPS, seed: int = 0) -> list[float]:
    """AdamW steps over batches of three videos (one per class, rotating); returns the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(steps):
        classes = [(step + i) % 3 for i in range(3)]
        loss = model(**caption_batch(family, classes, seed=seed + step % 4)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def assert_loss_falls(losses: list[float]) -> None:
    assert all(torch.isfinite(torch.tensor(losses))), losses
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < LOSS_RATIO * first, f"loss {first:.3f} -> {last:.3f}: {losses}"


def routed_tiny_model(family: str):
    """``tiny_model(family)`` with LAYERS decoder layers, patched with MoD at keep ratio 0.2."""
    return vidllm_ext.patch(
        tiny_model(family, layers=LAYERS), mod=vidllm_ext.MoDConfig(keep_ratio=0.2)
    )


def assert_routed_fine_tuning_learns(model, family: str, router_norm: float = ROUTER_NORM):
    """``fine_tune`` a routed model: the loss falls, every router weight moves off zero and each
    router's norm passes ``router_norm``, and the last step routed ROUTED_LAYERS, each keeping
    some but not all video tokens. Returns that step's MoD stats."""
    found = routers(model)
    assert_loss_falls(fine_tune(model, family))
    for name, router in found.items():
        weight = router.weight.detach()
        assert weight.abs().min() > 0, f"{name}: some weights never moved off zero"
        assert weight.norm() > router_norm, f"{name}: moved only {weight.norm():.2e}"
    stats = vidllm_ext.last_stats(model, "mod")
    assert stats is not None
    assert stats.routed_layers == ROUTED_LAYERS
    assert all(0 < after < stats.video_tokens_before for after in stats.video_tokens_after)
    return stats


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models gain nothing from threads, and on a shared host the waiting threads of an
    OpenMP pool made these steps 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
