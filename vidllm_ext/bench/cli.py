"""``python -m vidllm_ext bench [--family NAME...] [--device cpu|cuda] [--shapes NAME...]
[--quick] [--markdown PATH] [--results-dir DIR]``: every family's table on stdout (default: all
families), one progress line per family and per case on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vidllm_ext.bench import facts, harness, timing
from vidllm_ext.bench.families import FAMILIES


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen benchmark families and prints a table per family.

    Args:
        argv: the arguments after ``bench`` (``sys.argv[1:]`` when None).

    Returns:
        0 on success, 2 when the requested device cannot run the kernels (message on stderr).
        Unknown families or shapes are usage errors (argparse exits with status 2).

    Example:
        >>> main(["--family", "routing", "--device", "cpu", "--quick", "--shapes", "tiny"])
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    names = args.family or list(FAMILIES)
    problem = _shape_problem(names, args.shapes)
    if problem is not None:
        parser.error(problem)
    device = torch.device(args.device or _default_device())
    problem = facts.cuda_problem(device)
    if problem is not None:
        print(f"vidllm-ext bench: {problem}", file=sys.stderr)
        return 2
    budget = timing.QUICK if args.quick else timing.FULL
    copy_bytes_per_s = timing.copy_bandwidth(device, budget) if device.type == "cuda" else None
    reports = []
    for number, name in enumerate(names, start=1):
        print(f"== [{number}/{len(names)}] {name} ==", file=sys.stderr, flush=True)
        family = FAMILIES[name]
        wanted = [shape for shape in args.shapes or [] if shape in family.shapes]
        shapes = family.select_shapes(wanted, device, args.quick)
        report = harness.run_family(family, device, shapes, args.quick, copy_bytes_per_s)
        print(report.text, end="\n\n", flush=True)
        reports.append(report)
    _write(reports, device, args.markdown, args.results_dir)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidllm-ext bench",
        description="Times the vidllm ops against their PyTorch baselines (the reference and "
        "torch.compile(reference)) and prints the achieved fraction of the hardware limit.",
    )
    parser.add_argument(
        "--family",
        nargs="+",
        choices=list(FAMILIES),
        metavar="NAME",
        help=f"families to run, of {', '.join(FAMILIES)}; default: all",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="default: cuda when torch sees a GPU, else cpu",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="NAME",
        help="shapes to run; each family runs the named shapes it has, and each chosen family "
        "must have one. Default: each family's shapes for the device. "
        + "; ".join(f"{name}: {', '.join(family.shapes)}" for name, family in FAMILIES.items()),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few repeats, only the smallest shape, no torch.compile(reference): seconds, for CI",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="also write every report into this file"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        metavar="DIR",
        help="also write each family's report to DIR/<family>_<device>_<date>.md "
        "(benchmarks/results for measured tables)",
    )
    return parser


def _shape_problem(names: list[str], shapes: list[str] | None) -> str | None:
    """Why ``--shapes`` does not fit the chosen families, or None."""
    if not shapes:
        return None
    known = {shape for name in names for shape in FAMILIES[name].shapes}
    unknown = [shape for shape in shapes if shape not in known]
    if unknown:
        return f"--shapes: {', '.join(unknown)} is no shape of {', '.join(names)}"
    for name in names:
        if not any(shape in FAMILIES[name].shapes for shape in shapes):
            return (
                f"--shapes: {name} has none of {', '.join(shapes)} (its shapes: "
                f"{', '.join(FAMILIES[name].shapes)}); name one, or leave {name} out with --family"
            )
    return None


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write(
    reports: list[harness.Report],
    device: torch.device,
    markdown: Path | None,
    results_dir: Path | None,
) -> None:
    if markdown is not None:
        facts.save_report("\n".join(report.markdown for report in reports), markdown)
    if results_dir is not None:
        name = facts.device_name(device)
        for report in reports:
            facts.save_report(report.markdown, facts.results_file(results_dir, report.family, name))


if __name__ == "__main__":
    sys.exit(main())
