"""Timing, copy bandwidth, tables and run facts shared by every kernel benchmark.

CPU: warm-up, then the median of ``time.perf_counter`` measurements. CUDA: warm-up, then the
median of CUDA-event measurements with the L2 cache flushed (a 256 MiB buffer written) before each
one, so every repeat reads its inputs from device memory. Callables compared with each other are
measured in alternation.
"""

from __future__ import annotations

import datetime
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vidllm_ext import build_info

L2_FLUSH_BYTES = 256 * 1024**2
COPY_BYTES = 2 * 1024**3  # the copy-bandwidth probe copies this many bytes (and reads as many)


@dataclass(frozen=True)
class Budget:
    """How hard to measure: warm-up calls, then enough repeats to fill ``target_s`` seconds per
    timed callable, clamped to ``[min_repeats, max_repeats]``."""

    warmup: int
    target_s: float
    min_repeats: int
    max_repeats: int


FULL = Budget(warmup=3, target_s=0.75, min_repeats=5, max_repeats=1000)
QUICK = Budget(warmup=1, target_s=0.02, min_repeats=3, max_repeats=5)


def time_callables(
    fns: Sequence[Callable[[], object]], device: torch.device, budget: Budget
) -> list[float]:
    """Median seconds per call of each ``fn()`` on ``device``, measured in alternation (one call
    of each per round), so a slow spell on a shared machine hits them all alike.

    Warm-up calls are excluded, and with them any compilation. Each callable gets about
    ``budget.target_s`` seconds of repeats.

    Args:
        fns: the work to time, inputs bound; results are discarded.
        device: ``cpu`` (wall clock) or ``cuda`` (CUDA events on the current stream, L2 flushed).
        budget: warm-up calls and how many repeats to take.

    Returns:
        the median seconds of each callable, in order.

    Example:
        >>> x = torch.randn(1 << 20)
        >>> sum_s, sort_s = time_callables([x.sum, x.sort], torch.device("cpu"), QUICK)
    """
    for fn in fns:
        for _ in range(budget.warmup):
            fn()
    round_s = sum(_wall_time_once(fn, device) for fn in fns)
    wanted = round(budget.target_s * len(fns) / max(round_s, 1e-9))
    repeats = min(max(wanted, budget.min_repeats), budget.max_repeats)
    if device.type == "cuda":
        samples = _cuda_samples(fns, device, repeats)
    else:
        rounds = [[_wall_time_once(fn, device) for fn in fns] for _ in range(repeats)]
        samples = [list(column) for column in zip(*rounds)]
    return [statistics.median(column) for column in samples]


def _wall_time_once(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_samples(
    fns: Sequence[Callable[[], object]], device: torch.device, repeats: int
) -> list[list[float]]:
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    events = [
        [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
        for _ in range(repeats)
    ]
    for round_events in events:
        for fn, (start, end) in zip(fns, round_events):
            flush.zero_()  # evicts fn's inputs from L2; runs before `start` in stream order
            start.record()
            fn()
            end.record()
    torch.cuda.synchronize(device)
    return [[start.elapsed_time(end) / 1e3 for start, end in column] for column in zip(*events)]


def copy_bandwidth(device: torch.device, budget: Budget) -> float:
    """The device's measured copy bandwidth in bytes/s: a ``COPY_BYTES`` device-to-device copy,
    counting the bytes read plus the bytes written.

    Example:
        >>> gigabytes_per_s = copy_bandwidth(torch.device("cuda"), FULL) / 1e9
    """
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    (copy_s,) = time_callables([lambda: target.copy_(source)], device, budget)
    return 2 * COPY_BYTES / copy_s


def compile_failure(exc: Exception) -> str:
    """One line naming why ``torch.compile`` (or the compiled call) failed.

    Example:
        >>> compile_failure(RuntimeError("no C++ compiler\\ndetails..."))
        'RuntimeError: no C++ compiler'
    """
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}"[:200]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the threads torch uses.

    Example:
        >>> device_name(torch.device("cpu"))
        'AMD EPYC (2 threads)'
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    return f"{model} ({torch.get_num_threads()} threads)"


def cuda_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be measured (CUDA asked for, but torch sees no GPU or this build has
    no CUDA kernels), or None."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "--device cuda: torch sees no CUDA device (use --device cpu)"
    if not build_info()["cuda_compiled"]:
        return (
            "--device cuda: this build of vidllm_ext has no CUDA kernels; rebuild with "
            "VIDLLM_CUDA=1 (`VIDLLM_CUDA=1 pip install .`) or use --device cpu"
        )
    return None


def results_file(folder: Path, kind: str, device: str, date: datetime.date | None = None) -> Path:
    """``folder/<kind>_<device-slug>_<YYYY-MM-DD>.md`` (date: today, UTC): where a suite writes
    its report.

    Example:
        >>> results_file(Path("results"), "dtd", "NVIDIA H200", datetime.date(2026, 11, 21)).name
        'dtd_nvidia-h200_2026-11-21.md'
    """
    date = date or datetime.datetime.now(datetime.timezone.utc).date()
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return folder / f"{kind}_{slug}_{date.isoformat()}.md"


def save_report(markdown: str, path: Path | None) -> None:
    """Writes a Markdown report to ``path`` (folders created) and says so on stderr; nothing
    when path is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    print(f"wrote {path}", file=sys.stderr)


def commit_label() -> str:
    """The checkout's commit (``-dirty`` with uncommitted changes) and, when it differs, the
    commit the compiled extension was built from.

    Example:
        >>> commit_label()
        '91fb307d37b7-dirty (extension built at 26e9c4152c2a)'
    """
    built = str(build_info().get("git_commit") or "unknown")
    try:
        checkout = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return built
    if checkout.removesuffix("-dirty") == built:
        return checkout
    return f"{checkout} (extension built at {built})"


def run_facts(
    device: torch.device, budget: Budget, copy_bytes_per_s: float | None
) -> list[tuple[str, str]]:
    """``(name, value)`` lines that head a results table: device, commit, date, torch, how it
    was timed, copy bandwidth.

    Example:
        >>> run_facts(torch.device("cpu"), FULL, None)[0]
        ('device', 'AMD EPYC (2 threads)')
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    bandwidth = (
        f"{copy_bytes_per_s / 1e9:.1f} GB/s (device-to-device copy of {COPY_BYTES / 1e9:.2f} GB, "
        "bytes read + written)"
        if copy_bytes_per_s is not None
        else "not measured (GPU only)"
    )
    return [
        ("device", device_name(device)),
        ("commit", commit_label()),
        ("date", now.strftime("%Y-%m-%d %H:%M UTC")),
        ("torch", torch.__version__),
        ("timing", timing_method(device, budget)),
        ("copy bandwidth", bandwidth),
    ]


def timing_method(device: torch.device, budget: Budget) -> str:
    """How :func:`time_callable` measures on ``device`` with ``budget``, in words.

    Example:
        >>> timing_method(torch.device("cpu"), QUICK)
        'median of 3-5 repeats (~0.02 s) after 1 warm-up call(s); wall clock (time.perf_counter)'
    """
    repeats = (
        f"median of {budget.min_repeats}-{budget.max_repeats} repeats (~{budget.target_s:g} s) "
        f"after {budget.warmup} warm-up call(s)"
    )
    if device.type == "cuda":
        flush = f"{L2_FLUSH_BYTES // 1024**2} MiB"
        return f"{repeats}; CUDA events, L2 flushed ({flush} written) before each repeat"
    return f"{repeats}; wall clock (time.perf_counter)"


def format_ms(seconds: float) -> str:
    """Seconds as milliseconds with four significant digits: ``0.001234 -> "1.234"``."""
    return f"{seconds * 1e3:#.4g}"


def compiled_cells(compiled_s: float | str, op_s: float, notes: list[str]) -> tuple[str, str]:
    """The "compiled ms" and "vs compiled" cells. A compiled reference that could not be timed
    (``compiled_s`` is the reason) becomes ``"n/a [k]"``, its reason appended to ``notes`` once
    as note k."""
    if isinstance(compiled_s, float):
        return format_ms(compiled_s), f"{compiled_s / op_s:.2f}x"
    if compiled_s not in notes:
        notes.append(compiled_s)
    return f"n/a [{notes.index(compiled_s) + 1}]", "n/a"


@dataclass(frozen=True)
class Column:
    """A table column: its title and whether its cells are numbers (right-aligned)."""

    title: str
    numeric: bool = True


def text_table(columns: list[Column], rows: list[list[str]]) -> str:
    """A plain table, columns padded to their widest cell.

    Example:
        >>> print(text_table([Column("case", False), Column("ms")], [["cpu", "12.5"]]))
        case    ms
        ----  ----
        cpu   12.5
    """
    widths = [max(len(col.title), *(len(row[i]) for row in rows)) for i, col in enumerate(columns)]

    def line(cells: list[str]) -> str:
        padded = (
            cell.rjust(width) if col.numeric else cell.ljust(width)
            for cell, width, col in zip(cells, widths, columns)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([col.title for col in columns]), rule, *map(line, rows)])


def markdown_table(columns: list[Column], rows: list[list[str]]) -> str:
    """The same table as GitHub markdown, numbers right-aligned.

    Example:
        >>> print(markdown_table([Column("case", False), Column("ms")], [["cpu", "12.5"]]))
        | case | ms |
        |:--|--:|
        | cpu | 12.5 |
    """
    header = "| " + " | ".join(col.title for col in columns) + " |"
    align = "|" + "|".join("--:" if col.numeric else ":--" for col in columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([header, align, *body])


def render_report(
    titles: tuple[str, str],
    facts: list[tuple[str, str]],
    columns: list[Column],
    rows: list[list[str]],
    lines: list[str],
) -> tuple[str, str]:
    """(terminal text, Markdown) of a benchmark run: title, run facts, the table, note lines.

    ``titles`` is (terminal title, Markdown heading)."""
    text = "\n".join(
        [
            titles[0],
            *(f"{name}: {value}" for name, value in facts),
            "",
            text_table(columns, rows),
            "",
            *lines,
        ]
    )
    markdown = "\n".join(
        [
            f"# {titles[1]}",
            "",
            *(f"- **{name}**: {value}" for name, value in facts),
            "",
            markdown_table(columns, rows),
            "",
            *(f"- {line}" for line in lines),
            "",
        ]
    )
    return text, markdown
