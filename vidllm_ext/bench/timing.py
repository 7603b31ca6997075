"""Timing and copy bandwidth of every kernel benchmark.

CPU: warm-up, then the median of ``time.perf_counter`` measurements. CUDA: warm-up, then the
median of CUDA-event measurements with the L2 cache flushed (a 256 MiB buffer written) before each
one, so every repeat reads its inputs from device memory. Callables compared with each other are
measured in alternation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

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
