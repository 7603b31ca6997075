"""KV packing and group quantization benchmark: inputs, op and reference calls, and the cost model
(bytes each op must move, an estimate of its FLOPs). The pytest-benchmark suite
``benchmarks/test_kv_quant_cpu.py`` uses the same cases. No target is set for these ops.

Cost model, for x [R, T, D] (N = R * T * D elements of e bytes), group size G, k codes per byte
(4 for 2-bit, 8 for 1-bit, 5 for trits):

- pack: N code bytes read, ceil(D / k) * R * T packed bytes written; unpack the reverse;
- quantize (channel groups): x read once, codes written, float32 statistics written
  (R * ceil(T / G) * D scales, as many zero points for minmax2);
- dequantize: codes and statistics read, N * e bytes written;
- token groups: as channel groups with R * T * ceil(D / G) statistics of each kind.

FLOPs count float operations per element: minmax2 quantize 7 (min, max, subtract, divide, round,
two clamps), sign1/trit quantize 4 (abs, add, compare(s)), minmax2 dequantize 2 (multiply, add),
sign1/trit dequantize 1; packing does integer work only (0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from vidllm_ext import ops
from vidllm_ext.bench import harness
from vidllm_ext.bench.harness import Baseline, Measured
from vidllm_ext.bench.shapes import (
    KVShape,
    dtype_label,
    outlier_channels,
)
from vidllm_ext.bench.tables import text_columns
from vidllm_ext.ops import kv_quant_pack as kv_ops
from vidllm_ext.reference import kv_quant_pack as kv_ref

GROUP_SIZE = 32
MODES = ("minmax2", "sign1", "trit")
CODES_PER_BYTE = {"minmax2": 4, "sign1": 8, "trit": 5}
QUANTIZE_FLOPS = {"minmax2": 7, "sign1": 4, "trit": 4}
DEQUANTIZE_FLOPS = {"minmax2": 2, "sign1": 1, "trit": 1}


@dataclass(frozen=True)
class PackCase:
    """One benchmarked call: ``op(*args)`` against ``reference(*args)`` (same arguments), the
    bytes it must move and its FLOPs; ``exact``: op and reference must agree bitwise."""

    name: str
    op: Callable[..., object]
    reference: Callable[..., object]
    args: tuple
    bytes: int
    flops: int
    exact: bool


def build_cases(shape: tuple[int, int, int], dtype: torch.dtype, device: str) -> list[PackCase]:
    """Every case at ``shape`` (rows, tokens, head_dim) with inputs of ``dtype`` on ``device``.

    Example:
        >>> cases = build_cases((4, 4096, 128), torch.bfloat16, "cpu")
        >>> [case.name for case in cases][:2]
        ['pack_bits(2)', 'unpack_bits(2)']
    """
    rows, tokens, dim = shape
    n = rows * tokens * dim
    element = torch.empty((), dtype=dtype).element_size()
    x = outlier_channels(shape, device, torch.Generator(device=device).manual_seed(0)).to(dtype)
    generator = torch.Generator(device=device).manual_seed(1)
    cases = []
    for bits in (2, 1):
        codes = torch.randint(0, 2**bits, shape, generator=generator, device=device).byte()
        packed = ops.pack_bits(codes, bits)
        moved = n + packed.numel()
        cases.append(
            PackCase(
                f"pack_bits({bits})", ops.pack_bits, kv_ref.pack_bits, (codes, bits), moved, 0, True
            )
        )
        cases.append(
            PackCase(
                f"unpack_bits({bits})",
                ops.unpack_bits,
                kv_ref.unpack_bits,
                (packed, bits, dim),
                moved,
                0,
                True,
            )
        )
    trits = torch.randint(-1, 2, shape, generator=generator, device=device).char()
    packed = ops.pack_trits(trits)
    moved = n + packed.numel()
    cases.append(
        PackCase("pack_trits", ops.pack_trits, kv_ref.pack_trits, (trits,), moved, 0, True)
    )
    cases.append(
        PackCase(
            "unpack_trits", ops.unpack_trits, kv_ref.unpack_trits, (packed, dim), moved, 0, True
        )
    )
    groups = -(-tokens // GROUP_SIZE)
    for mode in MODES:
        code_bytes = rows * tokens * -(-dim // CODES_PER_BYTE[mode])
        stat_bytes = rows * groups * dim * 4 * (2 if mode == "minmax2" else 1)
        quantized = kv_ops.quantize_channel_groups(x, mode, GROUP_SIZE)
        cases.append(
            PackCase(
                f"quantize_channel_groups({mode})",
                kv_ops.quantize_channel_groups,
                kv_ref.quantize_channel_groups,
                (x, mode, GROUP_SIZE),
                n * element + code_bytes + stat_bytes,
                QUANTIZE_FLOPS[mode] * n,
                mode == "minmax2",
            )
        )
        cases.append(
            PackCase(
                f"dequantize_channel_groups({mode})",
                lambda *args: kv_ops.dequantize_channel_groups(*args, dtype=dtype),
                lambda *args: kv_ref.dequantize_channel_groups(*args, dtype=dtype),
                (*quantized, mode, GROUP_SIZE, dim),
                code_bytes + stat_bytes + n * element,
                DEQUANTIZE_FLOPS[mode] * n,
                True,
            )
        )
    code_bytes = rows * tokens * -(-dim // 4)
    stat_bytes = rows * tokens * -(-dim // GROUP_SIZE) * 8
    quantized = kv_ops.quantize_token_groups(x, GROUP_SIZE)
    cases.append(
        PackCase(
            "quantize_token_groups",
            kv_ops.quantize_token_groups,
            kv_ref.quantize_token_groups,
            (x, GROUP_SIZE),
            n * element + code_bytes + stat_bytes,
            QUANTIZE_FLOPS["minmax2"] * n,
            True,
        )
    )
    cases.append(
        PackCase(
            "dequantize_token_groups",
            lambda *args: kv_ops.dequantize_token_groups(*args, dtype=dtype),
            lambda *args: kv_ref.dequantize_token_groups(*args, dtype=dtype),
            (*quantized, GROUP_SIZE, dim),
            code_bytes + stat_bytes + n * element,
            DEQUANTIZE_FLOPS["minmax2"] * n,
            True,
        )
    )
    return cases


def outputs_agree(case: PackCase) -> bool:
    """Whether op and reference give bitwise the same outputs (NaN-free inputs), or, for the
    mean-based quantizers (not exact), the same shapes.

    Example:
        >>> all(outputs_agree(case) for case in build_cases((2, 64, 16), torch.float32, "cpu"))
        True
    """
    actual, expected = case.op(*case.args), case.reference(*case.args)
    if isinstance(actual, torch.Tensor):
        actual, expected = (actual,), (expected,)
    for a, e in zip(actual, expected):
        if a.shape != e.shape or (case.exact and not torch.equal(a, e)):
            return False
    return True


def cases(shape: KVShape, device: torch.device, quick: bool) -> Iterator[harness.Case]:
    """Every case of :func:`build_cases` at ``shape``, checked against its reference."""
    for case in build_cases(shape.sizes, shape.dtype, str(device)):
        yield harness.Case(
            cells=(shape.label, dtype_label(shape.dtype), case.name),
            op=lambda case=case: case.op(*case.args),
            baselines=(
                Baseline("ref", lambda case=case: case.reference(*case.args)),
                harness.compiled_baseline(harness.compiled_call(case.reference, *case.args), quick),
            ),
            bytes=case.bytes,
            flops=case.flops,
            notes=() if outputs_agree(case) else ("op and reference outputs DIFFER",),
            spec=case.name,
        )


def targets(
    device: torch.device, measured: list[Measured], copy_bytes_per_s: float | None
) -> list[str]:
    """None is set for the KV packing ops: the table is the result."""
    return ["target: none set for kv_quant (benchmarks/README.md); compare the columns"]


TITLE = "KV packing and group quantization benchmark"
COLUMNS = text_columns("rows x tokens x dim", "dtype", "op")
