"""Benchmark of the layer-skip routing ops; on CUDA writes
benchmarks/results/routing_<device>_<date>.md.

Run from the repository root:
``python benchmarks/gpu_routing.py [--device cuda|cpu] [--shapes NAMES...] [--quick]
[--markdown PATH]``. The default device is cuda; without a usable CUDA device (or a build with
CUDA kernels) it exits 0 with a message, measuring nothing. ``--device cpu`` measures the CPU
kernels and writes a file only with ``--markdown``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from routing_suite import report, run
from shapes import ROUTING_DEFAULT_SHAPES, ROUTING_SHAPES

from vidllm_ext.bench import harness

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    """Measures the routing ops on the chosen device and prints (and writes) the table.

    Returns:
        0, also after a message when CUDA was asked for but cannot be used.

    Example:
        >>> main(["--device", "cpu", "--quick"])
        0
    """
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    problem = harness.cuda_problem(device)
    if problem:
        print(f"gpu_routing: skipped, {problem}")
        return 0
    shapes = [ROUTING_SHAPES[name] for name in args.shapes or ROUTING_DEFAULT_SHAPES[device.type]]
    if args.quick:
        shapes = [min(shapes, key=lambda shape: shape.tokens * shape.dim)]
    budget = harness.QUICK if args.quick else harness.FULL
    copy_bytes_per_s = harness.copy_bandwidth(device, budget) if device.type == "cuda" else None
    measured = run(device, shapes, args.quick)
    text, markdown = report(device, shapes, measured, args.quick, copy_bytes_per_s)
    print(text)
    path = args.markdown
    if path is None and device.type == "cuda":
        path = harness.results_file(RESULTS, "routing", harness.device_name(device))
    harness.save_report(markdown, path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_routing.py",
        description="Times the routing ops against their PyTorch reference and "
        "torch.compile(reference).",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=sorted(ROUTING_SHAPES),
        metavar="NAME",
        help=f"shapes to run, of {', '.join(ROUTING_SHAPES)}; default: "
        + "; ".join(f"{dev}: {', '.join(names)}" for dev, names in ROUTING_DEFAULT_SHAPES.items()),
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repeats, the smallest shape, no torch.compile"
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the report here")
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
