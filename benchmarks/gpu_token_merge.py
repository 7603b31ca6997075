"""GPU benchmark of token merging; writes benchmarks/results/merge_<device>_<date>.md.

Run from the repository root: ``python benchmarks/gpu_token_merge.py [--shapes NAMES...]
[--quick]``.
Exits 0 with a message, measuring nothing, when no usable CUDA device is there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import token_merge_suite
import torch

from vidllm_ext.bench import harness

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    """Runs ``token_merge_suite --device cuda`` with ``argv`` appended, writing the results file;
    returns its exit code, or 0 after a message when CUDA cannot be used.

    Example:
        >>> main(["--quick"])
        0
    """
    problem = harness.cuda_problem(torch.device("cuda"))
    if problem:
        print(f"gpu_token_merge: skipped, {problem}")
        return 0
    path = harness.results_file(RESULTS, "merge", torch.cuda.get_device_name())
    return token_merge_suite.main(["--device", "cuda", "--markdown", str(path), *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
