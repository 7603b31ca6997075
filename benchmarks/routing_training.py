"""Training step of a Qwen2.5-VL text stack, dense vs routed (issue 7, section 6).

One training step (forward, backward, AdamW step) of the same model, unpatched-equivalent
(``patch(model)``) and routed (``patch(model, mod=MoDConfig(keep_ratio=0.2))``: interleaved
layers, gate sigmoid2), side by side in one run: median step time, peak CUDA memory, the bytes
autograd saves for the backward pass, and the model FLOPs of each. Target (VideoLLM-MoD reports
~42% less training time and ~30% less memory): >= 30% less step time and >= 20% less peak memory
on the GPU.

Run from the repository root:

    python benchmarks/routing_training.py              # CUDA: 7B text config, 4 layers, bf16;
                                                   # writes results/mod_training_<device>_<date>.md
    python benchmarks/routing_training.py --device cpu --preset cpu-small --markdown PATH
    python benchmarks/routing_training.py --device cpu --preset cpu-small --quick   # smoke run

See ``routing_training_setup.py`` for the model and inputs, and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from routing_training_setup import PRESETS, Sequence, build_model, step_flops, training_inputs

import vidllm_ext
from vidllm_ext.bench import facts, tables, timing
from vidllm_ext.bench.tables import Column
from vidllm_ext.bench.timing import Budget

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_TIME_SAVING, TARGET_MEMORY_SAVING = 0.30, 0.20
BUDGETS = {
    "cuda": Budget(warmup=2, target_s=3.0, min_repeats=5, max_repeats=20),
    "cpu": Budget(warmup=1, target_s=6.0, min_repeats=3, max_repeats=10),
    "quick": Budget(warmup=0, target_s=0.0, min_repeats=1, max_repeats=1),
}
GIB = 1024**3


@dataclass
class Measured:
    """One configuration's numbers; a list entry per round where rounds repeat."""

    name: str
    tokens_per_layer: list[int]
    routed_layers: tuple[int, ...]
    step_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    saved_bytes: int = 0
    peak_bytes: list[int] = field(default_factory=list)
    resident_bytes: list[int] = field(default_factory=list)


def saved_for_backward_bytes(model, inputs: dict) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass of one forward,
    parameters excluded (they are resident anyway)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**inputs).loss
    del loss
    return sum(storages.values())


def tokens_per_layer(model, layers: int, length: int, text: int) -> tuple[list[int], tuple]:
    """Tokens each decoder layer processed in the last forward (routing stats when patched)."""
    stats = vidllm_ext.last_stats(model, "mod")
    tokens = [length] * layers
    if stats is None:
        return tokens, ()
    for index, video in zip(stats.routed_layers, stats.video_tokens_after):
        tokens[index] = text + video
    return tokens, tuple(stats.routed_layers)


def measure(name, model, inputs, mod, sequence, device, budget, lr, into=None) -> Measured:
    """Patches ``model`` with ``mod``, makes a fresh AdamW, runs a warm-up step, then times
    steps; on CUDA one more step measures the peak memory. Unpatches before returning."""
    vidllm_ext.patch(model, mod=mod)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, fused=True)
    losses = []

    def step() -> None:
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    try:
        step()  # allocates AdamW's state
        layers = len(model.model.language_model.layers)
        tokens, routed = tokens_per_layer(model, layers, sequence.tokens, sequence.text_tokens)
        measured = into or Measured(name, tokens, routed)
        if into is None:
            measured.saved_bytes = saved_for_backward_bytes(model, inputs)
        (seconds,) = timing.time_callables([step], device, budget)
        measured.step_s.append(seconds)
        if device.type == "cuda":  # apart from the timing, whose L2 flush buffer would count
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            measured.resident_bytes.append(torch.cuda.memory_allocated(device))
            step()
            torch.cuda.synchronize(device)
            measured.peak_bytes.append(torch.cuda.max_memory_allocated(device))
        measured.losses.append(float(torch.stack(losses).float().mean()))
    finally:
        optimizer.state.clear()  # frees AdamW's state before the next configuration
        model.zero_grad(set_to_none=True)
        vidllm_ext.unpatch(model)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return measured


def run(args, device: torch.device) -> tuple[list[Measured], Sequence]:
    preset = PRESETS[args.preset]
    dtype = getattr(torch, args.dtype)
    sequence = Sequence(args.steps, args.tokens_per_step, args.text_tokens)
    print(f"routing_training: building {preset.describe(args.layers)} ...", file=sys.stderr)
    model = build_model(preset, args.layers, dtype, device)
    inputs = training_inputs(sequence, preset, dtype, device)
    routed = vidllm_ext.MoDConfig(keep_ratio=args.keep_ratio, layers="interleaved")
    budget = BUDGETS["quick" if args.quick else device.type]
    results: dict[str, Measured] = {}
    for round_index in range(args.rounds):
        for name, mod in (("dense", None), ("routed", routed)):
            print(f"routing_training: round {round_index + 1}, {name} ...", file=sys.stderr)
            results[name] = measure(
                name, model, inputs, mod, sequence, device, budget, args.lr, results.get(name)
            )
    return [results["dense"], results["routed"]], sequence


def report(args, device, measured: list[Measured], sequence: Sequence) -> tuple[str, str]:
    preset = PRESETS[args.preset]
    budget = BUDGETS["quick" if args.quick else device.type]
    run_facts = facts.run_facts(device, budget, None)
    run_facts = [fact for fact in run_facts if fact[0] != "copy bandwidth"]
    run_facts += [
        ("model", f"Qwen2.5-VL text stack, {preset.describe(args.layers)}, random weights"),
        (
            "optimizer",
            f"AdamW(fused=True, lr={args.lr:g}); {args.dtype} weights, gradients and state",
        ),
        (
            "trained",
            "every language-model parameter (embeddings, decoder, LM head) and the "
            "routers; a tiny vision tower (1 block, width 64, projecting to the text width) is "
            "frozen; no gradient checkpointing",
        ),
        ("sequence", sequence.describe()),
        (
            "routing",
            f"MoDConfig(keep_ratio={args.keep_ratio}, gate='sigmoid2', layers='interleaved')",
        ),
        (
            "rounds",
            f"{args.rounds} (dense then routed, each on a fresh AdamW after one "
            "warm-up step; the table gives the median over rounds)",
        ),
    ]
    if device.type == "cpu":
        run_facts.append(("host load average (1 min) at the end", f"{os.getloadavg()[0]:.2f}"))
    columns = [
        Column("run", False),
        Column("routed layers", False),
        Column("tokens per layer", False),
        Column("model TFLOP"),
        Column("step ms"),
        Column("TFLOP/s"),
        Column("loss"),
        Column("saved for bwd GiB"),
        Column("peak GiB"),
        Column("peak - resident GiB"),
    ]
    rows = [_row(item, preset, args.layers, sequence) for item in measured]
    return tables.render_report(
        ("Routed training step benchmark", "Routed training step benchmark (layer-skip routing)"),
        run_facts,
        columns,
        rows,
        _summary(measured, preset, args, device, sequence),
    )


def _flops(item: Measured, preset, layers: int, sequence: Sequence) -> float:
    return step_flops(preset, layers, item.tokens_per_layer, sequence.caption_tokens + 1)


def _row(item: Measured, preset, layers: int, sequence: Sequence) -> list[str]:
    step_s = statistics.median(item.step_s)
    flops = _flops(item, preset, layers, sequence)
    distinct = sorted(set(item.tokens_per_layer), reverse=True)
    peak = resident = "-"
    if item.peak_bytes:
        peak = f"{statistics.median(item.peak_bytes) / GIB:.2f}"
        extra = [p - r for p, r in zip(item.peak_bytes, item.resident_bytes)]
        resident = f"{statistics.median(extra) / GIB:.2f}"
    return [
        item.name,
        ", ".join(map(str, item.routed_layers)) or "-",
        " / ".join(map(str, distinct)),
        f"{flops / 1e12:.3f}",
        tables.format_ms(step_s),
        f"{flops / step_s / 1e12:.2f}",
        f"{statistics.median(item.losses):.3f}",
        f"{item.saved_bytes / GIB:.3f}",
        peak,
        resident,
    ]


def _summary(measured, preset, args, device, sequence) -> list[str]:
    dense, routed = measured
    lines = []
    flops = [_flops(item, preset, args.layers, sequence) for item in measured]
    time_saving = 1 - statistics.median(routed.step_s) / statistics.median(dense.step_s)
    lines.append(f"model FLOPs: routed needs {1 - flops[1] / flops[0]:.1%} fewer than dense")
    lines.append(
        f"saved for backward: {1 - routed.saved_bytes / dense.saved_bytes:.1%} less routed"
    )
    if len(dense.step_s) > 1:
        spread = ", ".join(
            f"{item.name} {min(item.step_s) * 1e3:.4g}-{max(item.step_s) * 1e3:.4g} ms"
            for item in measured
        )
        lines.append(f"step time over the rounds: {spread}")
    gpu = device.type == "cuda"
    scope = "" if gpu else " (the targets are for the GPU; informative here)"
    verdict = "PASS" if time_saving >= TARGET_TIME_SAVING else "MISS"
    lines.append(
        f"target >= {TARGET_TIME_SAVING:.0%} less step time{scope}: {time_saving:.1%} {verdict}"
    )
    if gpu:
        peak_saving = 1 - statistics.median(routed.peak_bytes) / statistics.median(dense.peak_bytes)
        verdict = "PASS" if peak_saving >= TARGET_MEMORY_SAVING else "MISS"
        lines.append(
            f"target >= {TARGET_MEMORY_SAVING:.0%} less peak memory: {peak_saving:.1%} {verdict}"
        )
        lines.append(
            "peak GiB: CUDA max_memory_allocated over one step after the timed ones; peak - "
            "resident: that less what was allocated before the step (weights and AdamW state): "
            "activations, gradients and temporaries"
        )
    else:
        lines.append(
            f"target >= {TARGET_MEMORY_SAVING:.0%} less peak memory: not measured (CPU: no "
            "allocator statistics; see the saved-for-backward column)"
        )
    return lines


def main(argv: list[str]) -> int:
    """Measures dense and routed training steps and prints (and writes) the report.

    Returns:
        0, also after a message when CUDA was asked for but cannot be used.
    """
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    problem = facts.cuda_problem(device)
    if problem:
        print(f"routing_training: skipped, {problem}")
        return 0
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.rounds = args.rounds or (1 if device.type == "cuda" else 2)
    measured, sequence = run(args, device)
    text, markdown = report(args, device, measured, sequence)
    print(text)
    path = args.markdown
    if path is None and device.type == "cuda":
        path = facts.results_file(RESULTS, "routing_training", facts.device_name(device))
    facts.save_report(markdown, path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routing_training.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-vl-7b")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="default: bfloat16 on CUDA, float32 on the CPU",
    )
    parser.add_argument("--steps", type=int, default=16, help="temporal steps of the video")
    parser.add_argument("--tokens-per-step", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--keep-ratio", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--rounds", type=int, help="dense/routed pairs to measure (default: 1 CUDA, 2 CPU)"
    )
    parser.add_argument("--quick", action="store_true", help="one timed step per run")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the report here")
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
