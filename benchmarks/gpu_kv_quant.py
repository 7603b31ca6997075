"""GPU benchmark of the KV packing ops and group quantizers; writes
benchmarks/results/kv_pack_<device>_<date>.md.

Run from the repository root: ``python benchmarks/gpu_kv_quant.py [--quick] [--no-compile]``.
Each case (see kv_quant_cases.py for the cost model) times the op, the PyTorch reference and
``torch.compile(reference)`` in alternation (vidllm_ext.bench.harness: CUDA events, L2 flushed)
and prints bytes moved, achieved GB/s, the fraction of the measured copy bandwidth and the
speedups. ``--device cpu`` runs the same table on the CPU (no results file unless
``--markdown``). Exits 0 with a message, measuring nothing, when CUDA is asked for and unusable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from kv_quant_cases import Case, build_cases, outputs_agree
from shapes import KV_SHAPES

from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Budget, Column

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE_NAME = "qwen2.5-vl-7b"
DTYPE = torch.bfloat16


def measure(case: Case, device: torch.device, budget: Budget, compile_reference: bool) -> dict:
    """Median seconds of op, reference and (when asked and it works) the compiled reference,
    timed in alternation; a string says why the compiled reference was not timed.

    Example:
        >>> measure(build_cases((2, 64, 16), torch.float32, "cpu")[0], torch.device("cpu"),
        ...         harness.QUICK, False)["op_s"] > 0
        True
    """
    calls = [lambda: case.op(*case.args), lambda: case.reference(*case.args)]
    compiled: float | str = "skipped (--quick or --no-compile)"
    if compile_reference:
        torch.compiler.reset()
        reference = torch.compile(case.reference)
        try:
            reference(*case.args)  # compiles now, outside the timing
            calls.append(lambda: reference(*case.args))
        except Exception as exc:
            compiled = "torch.compile(reference) failed: " + harness.compile_failure(exc)
    times = harness.time_callables(calls, device, budget)
    if len(times) == 3:
        compiled = times[2]
    return {"op_s": times[0], "reference_s": times[1], "compiled_s": compiled}


def table_row(case: Case, timing: dict, copy_bytes_per_s: float | None, notes: list[str]):
    op_s = timing["op_s"]
    bandwidth = case.bytes / op_s
    fraction = [] if copy_bytes_per_s is None else [f"{bandwidth / copy_bytes_per_s:.0%}"]
    compiled_ms, compiled_speedup = harness.compiled_cells(timing["compiled_s"], op_s, notes)
    return [
        case.name,
        f"{case.bytes / 1e6:.2f}",
        f"{case.flops / 1e6:.1f}",
        harness.format_ms(op_s),
        f"{bandwidth / 1e9:.1f}",
        *fraction,
        harness.format_ms(timing["reference_s"]),
        compiled_ms,
        f"{timing['reference_s'] / op_s:.2f}x",
        compiled_speedup,
    ]


def columns(with_copy_fraction: bool) -> list[Column]:
    return [
        Column("case", numeric=False),
        Column("MB moved"),
        Column("MFLOP"),
        Column("op ms"),
        Column("GB/s"),
        *([Column("of copy BW")] if with_copy_fraction else []),
        Column("ref ms"),
        Column("compiled ms"),
        Column("vs ref"),
        Column("vs compiled"),
    ]


def run(device: torch.device, quick: bool, compile_reference: bool) -> tuple[str, str]:
    """Measures every case; returns the report as text and as markdown.

    Example:
        >>> text, markdown = run(torch.device("cpu"), quick=True, compile_reference=False)
    """
    budget = harness.QUICK if quick else harness.FULL
    copy_bytes_per_s = harness.copy_bandwidth(device, budget) if device.type == "cuda" else None
    shape = KV_SHAPES[SHAPE_NAME]
    rows, notes = [], []
    cases = build_cases(shape, DTYPE, str(device))
    for number, case in enumerate(cases, start=1):
        print(f"[{number}/{len(cases)}] {case.name}", file=sys.stderr, flush=True)
        if not outputs_agree(case):
            notes.append(f"{case.name}: op and reference outputs DIFFER")
        timing = measure(case, device, budget, compile_reference)
        rows.append(table_row(case, timing, copy_bytes_per_s, notes))
    facts = [
        *harness.run_facts(device, budget, copy_bytes_per_s),
        ("shape", f"{SHAPE_NAME}: x [rows, tokens, head_dim] = {list(shape)}, bfloat16, group 32"),
    ]
    numbered = [f"[{i}] {note}" for i, note in enumerate(notes, start=1)]
    table_columns = columns(copy_bytes_per_s is not None)
    return harness.render_report(
        ("KV packing benchmark", "KV packing and group quantization benchmark"),
        facts,
        table_columns,
        rows,
        numbered,
    )


def main(argv: list[str]) -> int:
    """Runs the benchmark and writes the results file (CUDA) or ``--markdown``; returns 0, or 0
    after a message when CUDA is asked for but cannot be used.

    Example:
        >>> main(["--device", "cpu", "--quick"])
        0
    """
    parser = argparse.ArgumentParser(prog="gpu_kv_quant.py", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="few repeats, no torch.compile")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--markdown", type=Path, help="where to write the markdown report")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    problem = harness.cuda_problem(device)
    if problem:
        print(f"gpu_kv_quant: skipped, {problem}")
        return 0
    text, markdown = run(device, args.quick, not (args.quick or args.no_compile))
    print(text)
    path = args.markdown
    if path is None and device.type == "cuda":
        path = harness.results_file(RESULTS, "kv_pack", torch.cuda.get_device_name())
    harness.save_report(markdown, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
