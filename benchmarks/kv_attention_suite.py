"""Packed-attention decode benchmark: ops.packed_attention vs bf16 SDPA vs dequantize + SDPA.

One decode step (Lq = 1) of one layer at the Qwen2.5-VL-7B attention shape (28 query heads, 4 KV
heads, head_dim 128, bfloat16) over caches of 4k, 32k and 128k tokens, batch 1 and 8, for the
2/2 (KIVI-like) and 1.5/1.58 (VidKV) configurations; see kv_attention_cases.py for the three
calls and the cost model. Before timing, each case checks packed's output against dequantize +
SDPA (smallest row cosine > 0.999). The three calls are timed in alternation with the shared
harness (CUDA events with L2 flushed, or wall clock on the CPU); on CUDA the copy bandwidth is
measured once. The issue's targets are printed below the table, "met" or "not met" from the
measurement.

    python benchmarks/kv_attention_suite.py                 # CUDA; writes results/*.md
    python benchmarks/kv_attention_suite.py --device cpu --markdown [PATH]
    python benchmarks/kv_attention_suite.py --device cpu --quick   # smoke run, seconds

CPU defaults: 4k and 32k tokens, batch 1. Exits 0 with a message, measuring nothing, when CUDA is
asked for and torch sees no GPU or the build has no CUDA kernels. A packed_attention call that
raises (a build without its CUDA kernel) is reported in the table and its targets as not
measured; the baselines are still timed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from support.kv_attention_cases import (
    CONFIGS,
    HEAD_DIM,
    KV_HEADS,
    MIN_COSINE,
    Q_HEADS,
    Case,
    build_case,
    min_cosine,
)

from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Budget, Column

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = {"cuda": (4096, 32768, 131072), "cpu": (4096, 32768)}
BATCHES = {"cuda": (1, 8), "cpu": (1,)}
# The targets: (config, cached tokens, what, threshold).
GPU_TARGET_TOKENS = 131072
GPU_TARGETS = (
    ("1.5/1.58", "speedup over bf16 SDPA", 4.0),
    ("1.5/1.58", "fraction of copy bandwidth", 0.60),
    ("2/2", "speedup over bf16 SDPA", 3.0),
)
CPU_TARGET_TOKENS = 32768
CPU_TARGET = ("speedup over dequantize + SDPA", 2.0)


@dataclass(frozen=True)
class Measured:
    """One case's cost model and medians (seconds); ``packed_s`` is None when packed_attention
    raised (``packed_error`` says what), and so is the cosine."""

    config: str
    batch: int
    tokens: int
    packed_bytes: int
    bf16_bytes: int
    flops: int
    cosine: float | None  # packed vs dequantize + SDPA, smallest over output rows
    packed_s: float | None
    bf16_s: float
    dequantize_s: float
    packed_error: str | None
    sdpa_note: str


def measure(case: Case, budget: Budget) -> Measured:
    """Checks packed against dequantize + SDPA, then times the calls in alternation."""
    device = case.q.device
    error, cosine = None, None
    try:
        cosine = min_cosine(case.packed(), case.dequantize_sdpa())
    except Exception as exc:  # reported in the table (e.g. a build without the CUDA kernel)
        error = harness.compile_failure(exc)
    calls = [case.bf16_sdpa, case.dequantize_sdpa]
    if error is None:
        calls.insert(0, case.packed)
    times = harness.time_callables(calls, device, budget)
    packed_s = times.pop(0) if error is None else None
    return Measured(
        config=case.config,
        batch=case.batch,
        tokens=case.tokens,
        packed_bytes=case.packed_bytes,
        bf16_bytes=case.bf16_bytes,
        flops=case.flops,
        cosine=cosine,
        packed_s=packed_s,
        bf16_s=times[0],
        dequantize_s=times[1],
        packed_error=error,
        sdpa_note=case.sdpa_note,
    )


def run(
    device: torch.device, configs: list[str], lengths: list[int], batches: list[int], quick: bool
) -> list[Measured]:
    """Every configuration x length x batch; progress and the cosine checks on stderr."""
    budget = harness.QUICK if quick else harness.FULL
    grid = [(c, t, b) for c in configs for t in lengths for b in batches]
    results = []
    for number, (config, tokens, batch) in enumerate(grid, start=1):
        label = f"{config} T={tokens} B={batch}"
        print(f"[{number}/{len(grid)}] {label}: filling the cache", file=sys.stderr, flush=True)
        case = build_case(config, batch, tokens, device)
        item = measure(case, budget)
        if item.packed_error is not None:
            print(f"  packed_attention failed: {item.packed_error}", file=sys.stderr)
        else:
            verdict = "ok" if item.cosine > MIN_COSINE else "FAILED"
            print(
                f"  check: min cosine packed vs dequantize + SDPA {item.cosine:.6f} "
                f"(> {MIN_COSINE}: {verdict})",
                file=sys.stderr,
                flush=True,
            )
        results.append(item)
        del case
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _columns(with_copy_fraction: bool) -> list[Column]:
    return [
        Column("config", numeric=False),
        Column("B"),
        Column("T"),
        Column("packed MB"),
        Column("bf16 MB"),
        Column("min cos vs deq"),
        Column("packed ms"),
        Column("GB/s"),
        *([Column("of copy BW")] if with_copy_fraction else []),
        Column("bf16 SDPA ms"),
        Column("deq+SDPA ms"),
        Column("vs bf16 SDPA"),
        Column("vs deq+SDPA"),
    ]


def _row(item: Measured, copy_bytes_per_s: float | None, notes: list[str]) -> list[str]:
    head = [
        item.config,
        str(item.batch),
        str(item.tokens),
        f"{item.packed_bytes / 1e6:.2f}",
        f"{item.bf16_bytes / 1e6:.2f}",
    ]
    baselines = [harness.format_ms(item.bf16_s), harness.format_ms(item.dequantize_s)]
    if item.packed_s is None:
        if item.packed_error not in notes:
            notes.append(item.packed_error)
        failed = f"failed [{notes.index(item.packed_error) + 1}]"
        copy = [] if copy_bytes_per_s is None else ["n/a"]
        return [*head, "n/a", failed, "n/a", *copy, *baselines, "n/a", "n/a"]
    bandwidth = item.packed_bytes / item.packed_s
    copy = [] if copy_bytes_per_s is None else [f"{bandwidth / copy_bytes_per_s:.0%}"]
    cosine = f"{item.cosine:.6f}" + ("" if item.cosine > MIN_COSINE else " LOW")
    return [
        *head,
        cosine,
        harness.format_ms(item.packed_s),
        f"{bandwidth / 1e9:#.3g}",
        *copy,
        *baselines,
        f"{item.bf16_s / item.packed_s:.2f}x",
        f"{item.dequantize_s / item.packed_s:.2f}x",
    ]


def _verdict(value: float, threshold: float, percent: bool) -> str:
    shown = f"{value:.1%}" if percent else f"{value:.2f}x"
    return f"{shown} ({'met' if value >= threshold else 'not met'})"


def targets(measured: list[Measured], device: torch.device, copy_bytes_per_s) -> list[str]:
    """The issue's targets for this device, each with the measured ratio and met / not met;
    the other device's targets as not measured in this run."""
    lines = []
    gpu = device.type == "cuda"
    for config, what, threshold in GPU_TARGETS:
        bar = f"{threshold:.0%}" if "fraction" in what else f"{threshold:g}x"
        title = f"target GPU: {config} at {GPU_TARGET_TOKENS} tokens, {what} >= {bar}"
        rows = [m for m in measured if m.config == config and m.tokens == GPU_TARGET_TOKENS]
        if not gpu or not rows:
            reason = "needs --device cuda" if not gpu else f"needs T={GPU_TARGET_TOKENS}"
            lines.append(f"{title}: not measured in this run ({reason})")
        for m in rows if gpu else []:
            if m.packed_s is None:
                lines.append(f"{title}, B={m.batch}: not measured (packed_attention failed)")
            elif "fraction" in what:
                fraction = m.packed_bytes / m.packed_s / copy_bytes_per_s
                lines.append(f"{title}, B={m.batch}: {_verdict(fraction, threshold, True)}")
            else:
                speedup = m.bf16_s / m.packed_s
                lines.append(f"{title}, B={m.batch}: {_verdict(speedup, threshold, False)}")
    what, threshold = CPU_TARGET
    title = f"target CPU: at {CPU_TARGET_TOKENS} tokens, {what} >= {threshold:g}x"
    rows = [m for m in measured if m.tokens == CPU_TARGET_TOKENS]
    if gpu or not rows:
        reason = "needs --device cpu" if gpu else f"needs T={CPU_TARGET_TOKENS}"
        lines.append(f"{title}: not measured in this run ({reason})")
    for m in [] if gpu else rows:
        if m.packed_s is None:
            lines.append(f"{title}, {m.config} B={m.batch}: not measured (packed_attention failed)")
        else:
            speedup = m.dequantize_s / m.packed_s
            lines.append(f"{title}, {m.config} B={m.batch}: {_verdict(speedup, threshold, False)}")
    return lines


def report(
    device: torch.device,
    measured: list[Measured],
    quick: bool,
    copy_bytes_per_s: float | None,
    load_at_start: float,
) -> tuple[str, str]:
    """The report as (plain text, markdown)."""
    budget = harness.QUICK if quick else harness.FULL
    notes: list[str] = []
    rows = [_row(item, copy_bytes_per_s, notes) for item in measured]
    sdpa_notes = sorted({item.sdpa_note for item in measured})
    facts = [
        *harness.run_facts(device, budget, copy_bytes_per_s),
        (
            "shape",
            f"Qwen2.5-VL-7B attention: q [B, {Q_HEADS}, 1, {HEAD_DIM}] (decode), cache "
            f"[B, {KV_HEADS}, T, {HEAD_DIM}], bfloat16",
        ),
        (
            "configs",
            "; ".join(
                f"{name}: key_bits {c.key_bits:g}, value_bits {c.value_bits:g}, group "
                f"{c.group_size}, residual {c.residual_length}, key_transform {c.key_transform}, "
                f"value_axis {c.value_axis}, scales {c.scale_dtype}"
                for name, c in CONFIGS.items()
                if any(m.config == name for m in measured)
            ),
        ),
        (
            "method",
            "packed = ops.packed_attention(q, layer); bf16 SDPA = scaled_dot_product_attention "
            f"over the unquantized cache ({'; '.join(sdpa_notes)}); deq+SDPA = "
            "layer.dequantized() then scaled_dot_product_attention(enable_gqa=True), default "
            "backend; the three timed in alternation. Bytes: packed = layer.nbytes() + q + out, "
            f"bf16 = 2*B*{KV_HEADS}*T*{HEAD_DIM}*2 + q + out; FLOPs 4*B*{Q_HEADS}*T*{HEAD_DIM}. "
            f"Cosine: smallest over output rows, packed vs deq+SDPA (must be > {MIN_COSINE})",
        ),
    ]
    if device.type == "cpu":  # other processes share the cores: say how busy they were
        facts.append(
            (
                "host load average (1 min)",
                f"{load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end",
            )
        )
    numbered = [f"[{number}] packed_attention failed: {n}" for number, n in enumerate(notes, 1)]
    lines = [*numbered, *targets(measured, device, copy_bytes_per_s)]
    columns = _columns(copy_bytes_per_s is not None)
    return harness.render_report(
        ("Packed attention decode benchmark", "Packed attention decode benchmark"),
        facts,
        columns,
        rows,
        lines,
    )


def main(argv: list[str]) -> int:
    """Runs the benchmark; writes the results file on CUDA or with ``--markdown``; returns 0.

    Example:
        >>> main(["--device", "cpu", "--quick"])
        0
    """
    parser = argparse.ArgumentParser(
        prog="kv_attention_suite.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="few repeats, smallest T, batch 1")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--lengths", type=int, nargs="+", help="cached tokens (default per device)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default per device)")
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="?",
        const=True,
        help="write the markdown report to PATH (default: results/packed_attention_<device>_"
        "<date>.md)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    problem = harness.cuda_problem(device)
    if problem:
        print(f"kv_attention_suite: skipped, {problem}")
        return 0
    load_at_start = os.getloadavg()[0]
    lengths = args.lengths or list(LENGTHS[device.type])
    batches = args.batches or list(BATCHES[device.type])
    if args.quick:
        lengths, batches = [min(lengths)], [min(batches)]
    budget = harness.QUICK if args.quick else harness.FULL
    copy_bytes_per_s = harness.copy_bandwidth(device, budget) if device.type == "cuda" else None
    measured = run(device, args.configs, lengths, batches, args.quick)
    text, markdown = report(device, measured, args.quick, copy_bytes_per_s, load_at_start)
    print(text)
    path = args.markdown if isinstance(args.markdown, Path) else None
    if path is None and (args.markdown or device.type == "cuda"):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        path = harness.results_file(RESULTS, "packed_attention", name)
    harness.save_report(markdown, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
