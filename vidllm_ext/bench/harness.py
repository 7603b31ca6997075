"""The one run loop of every benchmark family: each case's op timed against its baselines, the
cost model's bytes and FLOPs turned into GB/s, GFLOP/s and (on CUDA) the fraction of the measured
copy bandwidth, and the report (run facts, the table, notes, the family's target verdicts).

A family (:class:`Family`, one module per technique in :mod:`vidllm_ext.bench`) only says what
to measure: its shapes, its cases (inputs bound into calls, with their cost) and its targets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vidllm_ext.bench import facts, timing
from vidllm_ext.bench.tables import Column, format_ms, render_report


@dataclass(frozen=True)
class Baseline:
    """A call the op is compared with: its column name (``"ref"``, ``"compiled"``, ...) and the
    call, or a string saying why it is not timed."""

    name: str
    call: Callable[[], object] | str


@dataclass(frozen=True)
class Case:
    """One table row to measure.

    ``cells``: the family's descriptive cells (its ``columns``, in order, after the shape name
    the harness puts first); ``op``: the vidllm
    call, inputs bound, or a string saying why it cannot run; ``baselines``: what it is compared
    with; ``bytes`` and ``flops``: the cost model (what the op must move and do); ``notes``: what
    the family's check of the op against its reference found (printed below the table);
    ``spec``: the family's own description of the case, for its targets.
    """

    cells: tuple[str, ...]
    op: Callable[[], object] | str
    baselines: tuple[Baseline, ...]
    bytes: int
    flops: int
    notes: tuple[str, ...] = ()
    spec: Any = None


@dataclass(frozen=True)
class Measured:
    """What one case measured (medians in seconds); the calls themselves are not kept, so a
    case's inputs are freed once it is measured. ``op_s`` is the reason string when the op could
    not run; a baseline's entry likewise when it was not timed."""

    shape: Any
    cells: tuple[str, ...]
    bytes: int
    flops: int
    spec: Any
    op_s: float | str
    baseline_s: dict[str, float | str]

    def speedup_over(self, baseline: str) -> float | None:
        """Baseline seconds over op seconds, or None when either was not timed."""
        base = self.baseline_s.get(baseline)
        if isinstance(self.op_s, str) or not isinstance(base, float):
            return None
        return base / self.op_s

    def copy_fraction(self, copy_bytes_per_s: float | None) -> float | None:
        """Achieved bandwidth over the measured copy bandwidth, or None (not measured)."""
        if isinstance(self.op_s, str) or copy_bytes_per_s is None:
            return None
        return self.bytes / self.op_s / copy_bytes_per_s


def shape_facts(shapes: list[Any]) -> list[tuple[str, str]]:
    """The default family fact: each shape's name and what it stands for."""
    return [("shapes", "; ".join(f"{shape.name}: {shape.about}" for shape in shapes))]


@dataclass(frozen=True)
class Family:
    """What one technique's benchmark measures.

    ``shapes`` by name (each with ``name``, ``about`` and ``elements``: see
    :mod:`vidllm_ext.bench.shapes`) and ``default_shapes`` per device type; ``columns``: the
    family's descriptive columns (after the shape name, which every table starts with);
    ``cases(shape, device, quick)`` yields the cases of one shape (built one at a time, so only
    one case's inputs live at once); ``targets(device, measured, copy_bytes_per_s)`` gives the
    verdict lines; ``facts(shapes)`` the lines above the table.
    """

    name: str
    title: str
    shapes: Mapping[str, Any]
    default_shapes: Mapping[str, tuple[str, ...]]
    columns: tuple[Column, ...]
    cases: Callable[[Any, torch.device, bool], Iterable[Case]]
    targets: Callable[[torch.device, list[Measured], float | None], list[str]]
    facts: Callable[[list[Any]], list[tuple[str, str]]] = field(default=shape_facts)

    def select_shapes(self, names: list[str] | None, device: torch.device, quick: bool):
        """The shapes to run: ``names`` of this family's shapes (default: the device's), only
        the smallest with ``quick``."""
        shapes = [self.shapes[name] for name in names or self.default_shapes[device.type]]
        return [min(shapes, key=lambda shape: shape.elements)] if quick else shapes


def compiled_baseline(make_call: Callable[[], Callable[[], object]], quick: bool) -> Baseline:
    """The ``compiled`` baseline: ``make_call()`` binds ``torch.compile(reference)`` to the inputs.

    Compiled here, by a first call, so timing excludes compilation; a failure becomes its reason.
    Caches are reset first, so earlier cases' graphs cannot push this one past the recompile
    limit (past it, dynamo silently runs eager code).

    Example:
        >>> x = torch.randn(8)
        >>> compiled_baseline(lambda: (lambda f: lambda: f(x))(torch.compile(torch.sin)), True).call
        'torch.compile(reference) skipped with --quick (compiling takes longer)'
    """
    if quick:
        return Baseline(
            "compiled", "torch.compile(reference) skipped with --quick (compiling takes longer)"
        )
    torch.compiler.reset()
    try:
        call = make_call()
        call()
    except Exception as exc:
        return Baseline(
            "compiled", "torch.compile(reference) failed: " + timing.compile_failure(exc)
        )
    return Baseline("compiled", call)


def compiled_call(
    reference: Callable[..., object], *args: Any, **kwargs: Any
) -> Callable[[], Callable[[], object]]:
    """For :func:`compiled_baseline`: ``torch.compile(reference)`` bound to the arguments.

    Example:
        >>> x = torch.randn(8)
        >>> baseline = compiled_baseline(compiled_call(torch.sin, x), quick=False)
    """

    def make_call() -> Callable[[], object]:
        function = torch.compile(reference)
        return lambda: function(*args, **kwargs)

    return make_call


def measure(shape: Any, case: Case, device: torch.device, budget: timing.Budget) -> Measured:
    """Times the op and every timeable baseline of ``case`` in alternation."""
    calls = [case.op] if callable(case.op) else []
    calls += [baseline.call for baseline in case.baselines if callable(baseline.call)]
    seconds = iter(timing.time_callables(calls, device, budget))
    op_s = next(seconds) if callable(case.op) else case.op
    baseline_s = {
        baseline.name: next(seconds) if callable(baseline.call) else baseline.call
        for baseline in case.baselines
    }
    return Measured(shape, case.cells, case.bytes, case.flops, case.spec, op_s, baseline_s)


@dataclass(frozen=True)
class Report:
    """A family's finished run, as terminal text and as Markdown (a results file)."""

    family: str
    text: str
    markdown: str


def run_family(
    family: Family,
    device: torch.device,
    shapes: list[Any],
    quick: bool,
    copy_bytes_per_s: float | None,
) -> Report:
    """Measures every case of ``family`` on every shape and builds its report; one progress line
    per case on stderr.

    Args:
        family: what to measure.
        device: ``cpu`` or ``cuda`` (usable: the caller checks).
        shapes: of ``family.shapes``, in order.
        quick: few repeats and no ``torch.compile(reference)`` (seconds, for tests and CI).
        copy_bytes_per_s: the device's measured copy bandwidth (None on the CPU).

    Example:
        >>> from vidllm_ext.bench.families import FAMILIES
        >>> family = FAMILIES["routing"]
        >>> shapes = family.select_shapes(["tiny"], torch.device("cpu"), quick=True)
        >>> print(run_family(family, torch.device("cpu"), shapes, True, None).text)
    """
    budget = timing.QUICK if quick else timing.FULL
    load_at_start = os.getloadavg()[0]
    measured, check_notes = [], []
    for shape_number, shape in enumerate(shapes, start=1):
        for case_number, case in enumerate(family.cases(shape, device, quick), start=1):
            where = f"{shape.name} (shape {shape_number}/{len(shapes)}), case {case_number}"
            print(f"[{family.name}] {where}: {' '.join(case.cells)}", file=sys.stderr, flush=True)
            check_notes += [f"{shape.name} {' '.join(case.cells)}: {note}" for note in case.notes]
            measured.append(measure(shape, case, device, budget))
    run_facts = [*facts.run_facts(device, budget, copy_bytes_per_s), *family.facts(shapes)]
    if device.type == "cpu":  # other processes share the cores: say how busy they were
        load = f"{load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
        run_facts.append(("host load average (1 min)", f"{load}; {os.cpu_count()} logical CPUs"))
    return _report(family, measured, run_facts, check_notes, device, copy_bytes_per_s)


def _report(family, measured, run_facts, check_notes, device, copy_bytes_per_s) -> Report:
    baselines = list(measured[0].baseline_s) if measured else []
    reasons: list[str] = []  # why a cell is n/a, numbered [1], [2], ... below the table
    rows = [_row(item, baselines, copy_bytes_per_s, reasons) for item in measured]
    columns = [
        Column("case", numeric=False),  # the shape's name
        *family.columns,
        *_measure_columns(baselines, copy_bytes_per_s is not None),
    ]
    lines = [f"[{number}] {reason}" for number, reason in enumerate(reasons, start=1)]
    lines += [f"check: {note}" for note in check_notes]
    lines += family.targets(device, measured, copy_bytes_per_s)
    text, markdown = render_report(
        (f"{family.name}: {family.title}", f"{family.title} ({family.name})"),
        run_facts,
        columns,
        rows,
        lines,
    )
    return Report(family.name, text, markdown)


def _measure_columns(baselines: list[str], with_copy_fraction: bool) -> list[Column]:
    return [
        Column("MB moved"),
        Column("GFLOP"),
        Column("op ms"),
        Column("GB/s"),
        Column("GFLOP/s"),
        *([Column("of copy BW")] if with_copy_fraction else []),
        *(Column(f"{name} ms") for name in baselines),
        *(Column(f"vs {name}") for name in baselines),
    ]


def _row(
    item: Measured, baselines: list[str], copy_bytes_per_s: float | None, reasons: list[str]
) -> list[str]:
    def reason_cell(reason: str) -> str:
        if reason not in reasons:
            reasons.append(reason)
        return f"n/a [{reasons.index(reason) + 1}]"

    cost = [f"{item.bytes / 1e6:.2f}", f"{item.flops / 1e9:.3f}"]
    if isinstance(item.op_s, str):
        achieved = [reason_cell(item.op_s), "n/a", "n/a"]
    else:
        bandwidth = item.bytes / item.op_s
        rate = f"{item.flops / item.op_s / 1e9:.1f}" if item.flops else "-"
        achieved = [format_ms(item.op_s), f"{bandwidth / 1e9:.1f}", rate]
    fraction = item.copy_fraction(copy_bytes_per_s)
    copy = [] if copy_bytes_per_s is None else ["n/a" if fraction is None else f"{fraction:.0%}"]
    times = [
        format_ms(seconds) if isinstance(seconds, float) else reason_cell(seconds)
        for seconds in (item.baseline_s[name] for name in baselines)
    ]
    speedups = [item.speedup_over(name) for name in baselines]
    versus = ["n/a" if speedup is None else f"{speedup:.2f}x" for speedup in speedups]
    return [item.shape.name, *item.cells, *cost, *achieved, *copy, *times, *versus]


def copy_fraction_verdicts(
    title: str,
    items: list[Measured],
    copy_bytes_per_s: float | None,
    target: float,
    where: Callable[[Measured], str],
) -> list[str]:
    """A line ``"<title>, <where(item)>: <verdict>"`` per item: its fraction of the measured copy
    bandwidth against ``target``; one "not measured" line when the copy was not measured."""
    if copy_bytes_per_s is None:
        return [f"{title}: not measured in this run (needs --device cuda)"]
    return [
        f"{title}, {where(item)}: "
        f"{verdict(item.copy_fraction(copy_bytes_per_s), target, percent=True)}"
        for item in items
    ]


def verdict(value: float | None, threshold: float, percent: bool = False) -> str:
    """``"2.31x PASS"`` or ``"61.0% MISS"``: a measured ratio against its target;
    ``"not measured"`` for None.

    Example:
        >>> verdict(0.61, 0.8, percent=True)
        '61.0% MISS'
    """
    if value is None:
        return "not measured"
    shown = f"{value:.1%}" if percent else f"{value:.2f}x"
    return f"{shown} {'PASS' if value >= threshold else 'MISS'}"
