"""``python -m vidllm_ext bench [dtd] [--device cpu|cuda] [--shapes NAMES...] [--quick]
[--markdown PATH]``: the table on stdout, one progress line per case on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vidllm_ext.bench import frame_drop as dtd
from vidllm_ext.bench import harness
from vidllm_ext.bench.shapes import DEFAULT_SHAPES, SHAPES, Shape

SUITES = ("dtd",)


def main(argv: list[str] | None = None) -> int:
    """Runs a benchmark suite and prints its table.

    Args:
        argv: the arguments after ``bench`` (``sys.argv[1:]`` when None).

    Returns:
        0 on success, 2 when the requested device cannot run the kernels (message on stderr).

    Example:
        >>> main(["dtd", "--device", "cpu", "--quick"])
        0
    """
    args = _parser().parse_args(argv)
    device = torch.device(args.device or _default_device())
    problem = harness.cuda_problem(device)
    if problem is not None:
        print(f"vidllm-ext bench: {problem}", file=sys.stderr)
        return 2
    report = dtd.run(device, _select_shapes(args.shapes, device, args.quick), args.quick)
    print(report.text())
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown())
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidllm-ext bench",
        description="Times the vidllm ops against their PyTorch reference and "
        "torch.compile(reference).",
    )
    parser.add_argument("suite", nargs="?", default="dtd", choices=SUITES, help="default: dtd")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="default: cuda when torch sees a GPU, else cpu",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=sorted(SHAPES),
        metavar="NAME",
        help=f"shapes to run, of {', '.join(SHAPES)}; default: "
        + "; ".join(f"{device}: {', '.join(names)}" for device, names in DEFAULT_SHAPES.items()),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few repeats, only the smallest shape, no torch.compile(reference): seconds, for CI",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report here")
    return parser


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _select_shapes(names: list[str] | None, device: torch.device, quick: bool) -> list[Shape]:
    shapes = [SHAPES[name] for name in names or DEFAULT_SHAPES[device.type]]
    if quick:
        return [min(shapes, key=lambda shape: shape.frame_bytes)]
    return shapes


if __name__ == "__main__":
    sys.exit(main())
