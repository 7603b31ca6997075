"""Routed fine-tuning under torch.distributed on CPU processes (gloo); run by torchrun:

    torchrun --standalone --nproc_per_node=2 tests/distributed/routing_ddp_train.py [--dense]

Checks, each on every rank, raising AssertionError (torchrun then exits non-zero):

1. DDP: a tiny 5-layer Qwen2.5-VL patched with ``MoDConfig(keep_ratio=0.2)`` (gate sigmoid2,
   routers on layers 1 and 3; the last layer dense, so both routers learn), wrapped in plain
   ``DistributedDataParallel`` (``find_unused_parameters`` off: every router gets a gradient
   through its gate), takes AdamW steps on different data per rank; afterwards the flattened
   parameters are bitwise identical across ranks, they moved, and the routers moved off zero.
2. DDP with ``gate="none"``: the router only chooses tokens (a top-k index has no gradient), so
   it gets none and plain DDP stops at the second step ("Expected to have finished reduction");
   frozen routers (``requires_grad_(False)``) make it plain DDP again.
3. DDP with a text-only batch on rank 1: there nothing is routed (routers unused) and the vision
   tower is idle, as in any model; ``find_unused_parameters=True`` keeps the ranks in step.
4. FSDP2: ``fully_shard`` on every decoder layer, then the root, of a patched model; one
   forward/backward gives the same gradients as DDP on the same data (routers included), and
   one AdamW step runs.

``--dense`` runs checks 1 and 4 on an unpatched-equivalent model (``patch(model)``, no routing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: models, caption_task

from support.caption_task import CAPTION_LENGTH, caption_batch, routers, tiny_model

import vidllm_ext

FAMILY = "qwen2_5_vl"
STEPS = 4


def patched_model(mod, seed: int = 0):
    """The same tiny 5-layer model on every rank (same seed), patched."""
    return vidllm_ext.patch(tiny_model(FAMILY, layers=5, seed=seed), mod=mod)


def rank_batch(step: int) -> dict:
    """Different data on every rank: the classes and scenes depend on the rank."""
    rank = dist.get_rank()
    return caption_batch(FAMILY, [(rank + step) % 3, (rank + step + 1) % 3], seed=10 * rank + step)


def flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def check_ddp_training(mod) -> None:
    model = patched_model(mod)
    router_names = sorted(routers(model))
    if mod is not None:
        assert router_names == [f"model.language_model.layers.{i}.vidllm_router" for i in (1, 3)], (
            router_names
        )
    before = flat_parameters(model).clone()
    ddp = DistributedDataParallel(model)  # find_unused_parameters=False: every parameter trains
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    losses = []
    for step in range(STEPS):
        loss = ddp(**rank_batch(step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    local_losses = torch.stack(losses)
    assert torch.isfinite(local_losses).all(), local_losses
    all_losses = gathered(local_losses)
    assert not torch.equal(all_losses[0], all_losses[1]), "ranks saw the same data"
    after = flat_parameters(model)
    for rank, parameters in enumerate(gathered(after)):
        assert torch.equal(parameters, after), f"parameters differ from rank {rank}'s"
    assert not torch.equal(after, before), "the steps changed no parameter"
    for name, router in routers(model).items():
        assert router.weight.abs().max() > 0, f"{name} did not move off zero"
    label = "routed" if mod is not None else "dense"
    per_rank = "; ".join(" ".join(f"{v:.3f}" for v in losses.tolist()) for losses in all_losses)
    report(f"DDP {label}: {STEPS} steps, parameters identical on every rank (losses {per_rank})")


def check_ddp_frozen_routers() -> None:
    model = patched_model(vidllm_ext.MoDConfig(keep_ratio=0.2, gate="none"))
    for router in routers(model).values():
        router.requires_grad_(False)  # gate "none": a router gets no gradient
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):  # DDP reports unused parameters at the second step's forward
        ddp(**rank_batch(step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = flat_parameters(model)
    for rank, parameters in enumerate(gathered(after)):
        assert torch.equal(parameters, after), f"parameters differ from rank {rank}'s"
    report("DDP gate='none' with frozen routers: 2 steps, parameters identical on every rank")


def check_ddp_text_only_rank() -> None:
    model = patched_model(vidllm_ext.MoDConfig(keep_ratio=0.2))
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    for step in range(2):
        batch = rank_batch(step)
        if dist.get_rank() == 1:
            batch = text_only(batch)
        ddp(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = flat_parameters(model)
    for rank, parameters in enumerate(gathered(after)):
        assert torch.equal(parameters, after), f"parameters differ from rank {rank}'s"
    for name, router in routers(model).items():
        assert router.weight.abs().max() > 0, f"{name} did not learn from rank 0's video"
    report("DDP with a text-only rank, find_unused_parameters=True: parameters identical")


def text_only(batch: dict) -> dict:
    """The batch's shape and labels with random text ids in place of the prompt and video."""
    ids = batch["input_ids"]
    text = torch.randint(10, 60, ids.shape, generator=torch.Generator().manual_seed(1))
    text[:, -CAPTION_LENGTH:] = ids[:, -CAPTION_LENGTH:]
    return dict(input_ids=text, attention_mask=batch["attention_mask"], labels=batch["labels"])


def ddp_gradients(mod, batch: dict) -> dict[str, torch.Tensor]:
    ddp = DistributedDataParallel(patched_model(mod))
    ddp(**batch).loss.backward()
    return {name: p.grad for name, p in ddp.module.named_parameters() if p.grad is not None}


def check_fsdp2(mod) -> None:
    batch = rank_batch(0)
    expected = ddp_gradients(mod, batch)
    model = patched_model(mod)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.language_model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss), loss
    gradients = {
        name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None
    }
    assert gradients.keys() == expected.keys(), sorted(gradients.keys() ^ expected.keys())
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    if mod is not None:
        assert any("vidllm_router" in name for name in gradients), "no router gradient"
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    report(f"FSDP2: {len(gradients)} gradients equal to DDP's, one AdamW step")


def report(line: str) -> None:
    if dist.get_rank() == 0:
        print(f"routing_ddp_train: {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", action="store_true", help="no routing (a control run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        mod = None if args.dense else vidllm_ext.MoDConfig(keep_ratio=0.2)
        check_ddp_training(mod)
        if mod is not None:
            check_ddp_frozen_routers()
            check_ddp_text_only_rank()
        check_fsdp2(mod)
        dist.barrier()
        report("OK")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
