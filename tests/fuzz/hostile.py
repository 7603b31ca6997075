"""The fuzz campaign's machinery: hostile mutations of an op's arguments, the README's contract as
an oracle, and one op's campaign (run in a subprocess by test_fuzz.py).

A case is a valid call (random small shapes, random data) described by :class:`Case`: its
arguments, which of them are tensors, ints, floats, strings or structures, and how to call the op
and its reference. A campaign call applies zero, one or two mutations to it. The contract decides:

- ``ok``: the op must return a result equal to the reference's (clean calls, and mutations that
  keep the input valid: strided, offset or non-contiguous views, requires_grad);
- ``error``: the op must raise ValueError or TypeError (None, lists, numpy arrays where a tensor or
  structure is expected, out-of-range indices, tampered structures on the CPU, ...);
- ``either``: ValueError/TypeError, or a result; a result must equal the reference's, and the
  reference must not have refused the input (a silent accept).

Any other exception fails (RuntimeError only for an allocation failure), and so does a crash: the
parent test reads the last input written to the progress file.
"""

from __future__ import annotations

import copy
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from support.helpers import leaves

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
BAD_DTYPES = (
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.float16,
    torch.bfloat16,
    torch.float32,
)
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@dataclass
class Arg:
    """One argument: ``kind`` is tensor, data (a float input tensor), index, offsets, packed
    (bytes), output, int, float, str, flag or structure; ``optional`` when None is valid."""

    kind: str
    optional: bool = False
    huge: int | None = None  # a dimension the op refuses past 2^31 - 1 before touching data
    tamper: list[tuple[str, Callable[[Any], Any]]] = field(default_factory=list)


@dataclass
class Case:
    values: dict[str, Any]
    args: dict[str, Arg]
    call: Callable[[Any, dict], Any]  # (impl, values) -> comparable result
    op: Any
    ref: Any
    # (values, result, expected) -> a problem or None; default: compare(result, expected)
    compare: Callable[[dict, Any, Any], str | None] | None = None


class Failure(AssertionError):
    pass


# ---- mutations ------------------------------------------------------------------------------


def _numpy(t: torch.Tensor):
    return (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy()


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_complex or dtype.is_floating_point:
        return t.to(dtype)
    return t.clamp(-3, 3).to(dtype) if t.is_floating_point() else t.to(dtype)


def _offset(t: torch.Tensor) -> torch.Tensor:
    base = torch.empty(t.numel() + 3, dtype=t.dtype)
    view = base[3:].view(t.shape)
    view.copy_(t)
    return view


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    if t.dim() < 2:
        return torch.stack([t, t], -1)[..., 0]
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def _expanded(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 0 or t.shape[0] == 0:
        return t
    return t[:1].expand(t.shape)


def _overlapping(t: torch.Tensor) -> torch.Tensor:
    if t.dim() < 2 or t.numel() == 0:
        return t
    stride = [1] * t.dim()
    return torch.as_strided(t.contiguous().flatten(), t.shape, stride)


def _nonfinite(rng, t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    if t.numel():
        flat = t.view(-1)
        for _ in range(1 + int(rng.integers(3))):
            flat[int(rng.integers(flat.numel()))] = float(
                rng.choice([math.nan, math.inf, -math.inf])
            )
    return t


def _narrow_zero(rng, t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 0:
        return t
    return t.narrow(int(rng.integers(t.dim())), 0, 0)


def _huge(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The same rank with dimension ``dim`` of 2^31 + 1 (zero stride: no memory)."""
    if t.dim() <= dim:
        return t
    shape = list(t.shape)
    shape[dim] = 2**31 + 1
    flat = t.reshape(-1)[:1] if t.numel() else torch.zeros(1, dtype=t.dtype)
    return flat.view([1] * t.dim()).expand(shape)


def tensor_mutations(rng, arg: Arg, t: torch.Tensor):
    """(description, new value, expectation) for a tensor argument."""
    none_expect = "either" if arg.optional else "error"
    options = [
        ("None", lambda: None, none_expect),
        ("list", lambda: t.tolist(), "error"),
        ("numpy", lambda: _numpy(t), "error"),
        ("python float", lambda: 1.5, "error"),
        ("rank + 1", lambda: t.unsqueeze(0), "either"),
        ("rank - 1", lambda: t.reshape(-1) if t.dim() > 1 else t.reshape(-1)[:1].sum(), "either"),
        ("zero-size dim", lambda: _narrow_zero(rng, t), "either"),
        ("meta", lambda: t.to("meta"), "either"),
        ("overlapping view", lambda: _overlapping(t), "either"),
        ("expanded zero-stride", lambda: _expanded(t), "either"),
    ]
    dtype = BAD_DTYPES[int(rng.integers(len(BAD_DTYPES)))]
    options.append((f"dtype {dtype}", lambda: _cast(t, dtype), "either"))
    valid_view = "ok" if arg.kind == "data" else "either"
    options += [
        ("storage offset", lambda: _offset(t), valid_view),
        ("non-contiguous", lambda: _noncontiguous(t), valid_view),
    ]
    if arg.kind == "data":
        options += [
            ("requires_grad", lambda: t.detach().clone().requires_grad_(), "ok"),
            ("NaN/inf data", lambda: _nonfinite(rng, t), "either"),
        ]
    if arg.huge is not None:
        options.append((f"dim {arg.huge} of 2^31+1", lambda: _huge(t, arg.huge), "error"))
    if arg.kind == "index" and t.numel():
        options += [
            ("index out of range", lambda: t + 10**6, "error"),
            ("negative index", lambda: t - 10**6, "error"),
        ]
    if arg.kind == "offsets" and t.numel() > 1:
        options += [
            ("non-monotonic offsets", lambda: t.flip(0) + 1, "error"),
            ("offsets past the end", lambda: t + 10**6, "error"),
        ]
    if arg.kind == "packed":
        options += [
            ("random bytes", lambda: torch.randint(0, 256, t.shape, dtype=torch.uint8), "either")
        ]
    return options


def scalar_mutations(arg: Arg, value):
    none_expect = "either" if arg.optional else "error"
    common = [("None", None, none_expect), ("list", [value], "error"), ("string", "3", "error")]
    if arg.kind == "int":
        return [
            *common,
            ("-1", -1, "either"),
            ("0", 0, "either"),
            ("2**40", 2**40, "either"),
            ("2**63", 2**63, "either"),
            ("float", 1.5, "error"),
            ("bool", True, "error"),
            ("tensor", torch.tensor(2), "either"),
        ]
    if arg.kind == "float":
        return [
            *common[:1],
            *common[2:],
            ("NaN", math.nan, "either"),
            ("inf", math.inf, "either"),
            ("-inf", -math.inf, "either"),
            ("-1.0", -1.0, "either"),
            ("2.5", 2.5, "either"),
            ("complex", 1j, "error"),
        ]
    if arg.kind == "str":
        return [*common, ("bogus", "bogus", "error"), ("int", 3, "error")]
    if arg.kind == "dtype":
        return [
            *common,
            ("torch.int32", torch.int32, "error"),
            ("float64", torch.float64, "either"),
        ]
    if arg.kind == "flag":
        return [("string", "yes", "either"), ("int", 2, "either")]
    return []


def structure_mutations(arg: Arg, value):
    options = [
        ("None", lambda: None, "either" if arg.optional else "error"),
        ("list", lambda: [value], "error"),
        ("the class", lambda: type(value), "error"),
    ]
    return options + [(name, lambda fn=fn: fn(value), "error") for name, fn in arg.tamper]


def mutate(rng, case: Case, name: str) -> tuple[list[str], str]:
    """Mutates argument ``name`` of ``case`` in place; (description, expectation)."""
    arg, value = case.args[name], case.values[name]
    if arg.kind == "structure":
        options = structure_mutations(arg, value)
    elif isinstance(value, torch.Tensor):
        options = tensor_mutations(rng, arg, value)
    elif value is None and arg.kind not in ("int", "float", "str", "flag"):
        return [f"{name}: None kept"], "ok"
    else:
        options = [(d, lambda v=v: v, e) for d, v, e in scalar_mutations(arg, value)]
    if not options:
        return [f"{name}: unchanged"], "ok"
    description, make, expect = options[int(rng.integers(len(options)))]
    case.values[name] = make()
    return [f"{name}: {description}"], expect


def combine(first: str, second: str) -> str:
    """The expectation of two mutations of different arguments: one invalid argument makes the
    call invalid; otherwise the weaker of the two."""
    if "error" in (first, second):
        return "error"
    return "either" if "either" in (first, second) else "ok"


# ---- the oracle -----------------------------------------------------------------------------


def _tensor_equal(got: torch.Tensor, want: torch.Tensor) -> str | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{got.dtype}{list(got.shape)} vs reference {want.dtype}{list(want.shape)}"
    if got.device.type == "meta":
        return None
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.is_floating_point():
        tol = TOLERANCE.get(got.dtype, 1e-4)
        close = torch.isclose(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=True)
        if bool(close.all()):
            return None
        where = (~close).nonzero()[0].tolist()
        return f"value {got[tuple(where)]} vs reference {want[tuple(where)]} at {where}"
    if torch.equal(got, want):
        return None
    where = (got != want).nonzero()[0].tolist() if got.numel() else []
    return f"exact values differ at {where}"


def compare(result, expected) -> str | None:
    got, want = leaves(result), leaves(expected)
    if len(got) != len(want):
        return f"{len(got)} outputs vs reference {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor):
            problem = _tensor_equal(g, w)
        elif isinstance(g, torch.Tensor) or isinstance(w, torch.Tensor):
            problem = f"{type(g).__name__} vs reference {type(w).__name__}"
        else:
            problem = None if (g == w or (g != g and w != w)) else f"{g!r} vs reference {w!r}"
        if problem:
            return f"output {i}: {problem}"
    return None


def _allowed_runtime_error(error: RuntimeError) -> bool:
    text = str(error).lower()
    return any(s in text for s in ("out of memory", "not enough memory", "can't allocate"))


def check_call(case: Case, expect: str, description: str) -> None:
    """Runs the op (and the reference on a copy) and applies the contract; raises Failure."""
    ref_values = copy.deepcopy(case.values) if case.ref is not None else None
    try:
        result = case.call(case.op, case.values)
    except (ValueError, TypeError) as error:
        if expect == "ok":
            raise Failure(f"rejected a valid input ({description}): {error!r}") from error
        return
    except RuntimeError as error:
        if _allowed_runtime_error(error):
            return
        raise Failure(f"RuntimeError ({description}):\n{traceback.format_exc()}") from error
    except Exception as error:
        raise Failure(
            f"{type(error).__name__} ({description}):\n{traceback.format_exc()}"
        ) from error
    if expect == "error":
        raise Failure(f"silent accept ({description}): returned {_summary(result)}")
    if case.ref is None or _on_meta(result):
        return
    try:
        expected = case.call(case.ref, ref_values)
    except (ValueError, TypeError) as error:
        raise Failure(f"silent accept ({description}): the reference raises {error!r}") from error
    except Exception:
        return  # the reference is an oracle for valid inputs only
    if case.compare is None:
        problem = compare(result, expected)
    else:
        problem = case.compare(ref_values, result, expected)
    if problem:
        raise Failure(f"result differs from the reference ({description}): {problem}")


def _on_meta(result) -> bool:
    return any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves(result))


def _summary(result) -> str:
    parts = []
    for leaf in leaves(result)[:6]:
        if isinstance(leaf, torch.Tensor):
            parts.append(f"{leaf.dtype}{list(leaf.shape)}")
        else:
            parts.append(repr(leaf)[:40])
    return ", ".join(parts)


def describe(case: Case) -> str:
    out = []
    for name, value in case.values.items():
        if isinstance(value, torch.Tensor):
            text = (
                f"tensor({value.dtype}, shape={list(value.shape)}, stride={list(value.stride())}, "
                f"offset={value.storage_offset()}, device={value.device}"
            )
            if value.device.type != "meta" and value.numel() <= 64:
                text += f", data={value.detach().cpu().tolist()}"
            out.append(f"{name}={text})")
        else:
            out.append(f"{name}={_short(value)}")
    return "; ".join(out)


def _short(value) -> str:
    text = repr(value)
    if len(text) > 300:
        return f"{type(value).__name__}(...)"
    return text
