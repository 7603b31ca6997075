"""The facts that head a results table (device, commit, date, how it was timed) and where a
report is written."""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from vidllm_ext import build_info
from vidllm_ext.bench.timing import COPY_BYTES, L2_FLUSH_BYTES, Budget


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
    """How :func:`~vidllm_ext.bench.timing.time_callables` measures on ``device`` with
    ``budget``, in words.

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
