"""Packed-attention decode benchmark: one decode step (Lq = 1) of one layer at the Qwen2.5-VL-7B
attention shape over a cache of T tokens, three ways, the cost model and the targets. The
pytest-benchmark suite ``benchmarks/test_kv_attention_cpu.py`` uses the same cases.

The three calls, on the same query ``q [B, Hq, 1, D]`` (bfloat16):

- ``packed``: ``ops.packed_attention(q, layer)`` over a :class:`vidllm_ext.PackedKVCache` layer,
  reading codes, statistics and the full-precision window;
- ``bf16 SDPA``: ``scaled_dot_product_attention`` over the unquantized bfloat16 keys and values
  ``[B, Hkv, T, D]`` the cache was fed (flash backend on CUDA), the cost of not quantizing;
- ``dequantize + SDPA``: ``layer.dequantized()`` (keys and values ``[B, Hkv, T, D]`` in bfloat16)
  then ``scaled_dot_product_attention(q, k, v, enable_gqa=True)``, the cost of quantizing without
  a fused kernel.

Before timing, each case checks packed's output against dequantize + SDPA (smallest row cosine
above ``MIN_COSINE``). A packed_attention call that raises (a build without its CUDA kernel) is
reported in the table and its targets as not measured; the baselines are still timed.

Cost model (bytes each call must read and write; Hkv KV heads, Hq query heads, head_dim D):

- packed: ``layer.nbytes()`` (codes, scales, zero points, channel split and the bfloat16 window)
  + q + output (``2 * B * Hq * D * 2``);
- bf16 SDPA: ``2 * B * Hkv * T * D * 2`` (keys and values) + q + output;
- dequantize + SDPA: packed's bytes + the bfloat16 keys and values written and read again;
- FLOPs (any of them): ``4 * B * Hq * T * D`` (q.k and p.v, a multiply-add as 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidllm_ext import KVQuantConfig, PackedKVCache, ops
from vidllm_ext.bench import harness, timing
from vidllm_ext.bench.harness import Baseline, Measured
from vidllm_ext.bench.shapes import (
    DecodeShape,
    outlier_channels,
)
from vidllm_ext.bench.tables import number_columns, text_columns

DTYPE = torch.bfloat16
# Qwen2.5-VL-7B attention: 28 query heads, 4 KV heads, head_dim 128.
Q_HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128
FEED_CHUNK = 8192  # tokens per cache.update while filling the cache (bounds its transient memory)
CONFIGS = {
    # KIVI-like: 2-bit keys and values, channel-wise groups of 32 tokens, no key transform.
    "2/2": KVQuantConfig(2, 2, group_size=32, residual_length=128, key_transform="none"),
    # VidKV: 1.5-bit keys (FFT on the 1-bit channels), 1.58-bit (ternary) values, groups of 32.
    "1.5/1.58": KVQuantConfig(1.5, 1.58, group_size=32, residual_length=128),
}
MIN_COSINE = 0.999
# The targets: (config, what, threshold) at GPU_TARGET_TOKENS cached tokens on the GPU.
GPU_TARGET_TOKENS = 131072
GPU_TARGETS = (
    ("1.5/1.58", "speedup over bf16 SDPA", 4.0),
    ("1.5/1.58", "fraction of copy bandwidth", 0.60),
    ("2/2", "speedup over bf16 SDPA", 3.0),
)
CPU_TARGET_TOKENS = 32768
CPU_TARGET = ("speedup over dequantize + SDPA", 2.0)


@dataclass
class DecodeCase:
    """One decode step at ``batch`` x ``tokens`` under configuration ``config``: the inputs, the
    three calls and their bytes."""

    config: str
    batch: int
    tokens: int
    q: torch.Tensor
    keys: torch.Tensor  # unquantized [B, Hkv, T, D], what the cache was fed
    values: torch.Tensor
    layer: object  # PackedKVCache layer 0 holding the same tokens
    bf16_sdpa: Callable[[], torch.Tensor]  # SDPA over the unquantized keys and values
    sdpa_note: str  # how the bf16 SDPA baseline runs (backend, GQA)

    @property
    def io_bytes(self) -> int:
        """Query read and output written (bfloat16)."""
        return 2 * self.q.numel() * self.q.element_size()

    @property
    def packed_bytes(self) -> int:
        return self.layer.nbytes() + self.io_bytes

    @property
    def bf16_bytes(self) -> int:
        kv = 2 * self.batch * KV_HEADS * self.tokens * HEAD_DIM * self.keys.element_size()
        return kv + self.io_bytes

    @property
    def dequantize_bytes(self) -> int:
        """Dequantize + SDPA: the layer read, bf16 keys and values written, then read again."""
        return self.packed_bytes + 2 * (self.bf16_bytes - self.io_bytes)

    @property
    def flops(self) -> int:
        return 4 * self.batch * Q_HEADS * self.tokens * HEAD_DIM

    def packed(self) -> torch.Tensor:
        return ops.packed_attention(self.q, self.layer)

    def dequantize_sdpa(self) -> torch.Tensor:
        keys, values = self.layer.dequantized()
        return F.scaled_dot_product_attention(self.q, keys, values, enable_gqa=True)


def build_case(config: str, batch: int, tokens: int, device: torch.device | str) -> DecodeCase:
    """Random keys and values (seeded) fed to a fresh PackedKVCache in chunks of FEED_CHUNK
    tokens, a random query, and the three calls.

    Example:
        >>> case = build_case("1.5/1.58", 1, 4096, "cpu")
        >>> case.packed().shape
        torch.Size([1, 28, 1, 128])
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(tokens * 10 + batch)
    shape = (batch, KV_HEADS, tokens, HEAD_DIM)
    keys = torch.empty(shape, dtype=DTYPE, device=device)
    values = torch.empty_like(keys)
    cache = PackedKVCache(CONFIGS[config])
    for start in range(0, tokens, FEED_CHUNK):
        stop = min(tokens, start + FEED_CHUNK)
        part = (batch, KV_HEADS, stop - start, HEAD_DIM)
        keys[:, :, start:stop] = outlier_channels(part, device, generator).to(DTYPE)
        values[:, :, start:stop] = torch.randn(part, generator=generator, device=device).to(DTYPE)
        cache.update(keys[:, :, start:stop], values[:, :, start:stop], 0)
    q = torch.randn(batch, Q_HEADS, 1, HEAD_DIM, generator=generator, device=device).to(DTYPE)
    bf16_sdpa, note = _bf16_sdpa(q, keys, values)
    return DecodeCase(config, batch, tokens, q, keys, values, cache.layers[0], bf16_sdpa, note)


def _bf16_sdpa(q, keys, values) -> tuple[Callable[[], torch.Tensor], str]:
    """The bf16 baseline and how it runs: on CUDA the flash backend with enable_gqa, or (if this
    torch's flash kernel refuses GQA) over heads repeated once, outside the timing."""
    if q.device.type != "cuda":
        return (
            lambda: F.scaled_dot_product_attention(q, keys, values, enable_gqa=True),
            "plain SDPA (enable_gqa=True)",
        )
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash(k, v, gqa: bool):
        def call():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)

        return call

    call = flash(keys, values, True)
    with contextlib.suppress(RuntimeError):
        call()
        return call, "flash backend, enable_gqa=True"
    group = q.shape[1] // keys.shape[1]
    repeated_k = keys.repeat_interleave(group, 1)
    repeated_v = values.repeat_interleave(group, 1)
    return (
        flash(repeated_k, repeated_v, False),
        f"flash backend over KV heads repeated {group}x (flash refused enable_gqa); bytes "
        "counted as the unrepeated cache",
    )


def min_cosine(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The smallest cosine similarity over the [B, Hq, Lq] output rows, in float64.

    Example:
        >>> x = torch.randn(1, 2, 1, 8)
        >>> round(min_cosine(x, 2 * x), 6)
        1.0
    """
    a, e = actual.double().flatten(0, -2), expected.double().flatten(0, -2)
    return F.cosine_similarity(a, e, dim=-1).min().item()


def cases(shape: DecodeShape, device: torch.device, quick: bool) -> Iterator[harness.Case]:
    """Every configuration of :data:`CONFIGS` at ``shape``, packed checked against dequantize +
    SDPA (a packed call that raises becomes the op's reason)."""
    for config in CONFIGS:
        case = build_case(config, shape.batch, shape.tokens, device)
        notes = [case.sdpa_note] if "refused" in case.sdpa_note else []
        try:
            cosine = min_cosine(case.packed(), case.dequantize_sdpa())
            op, shown = case.packed, f"{cosine:.6f}"
            if cosine <= MIN_COSINE:
                shown += " LOW"
                notes.append(f"packed vs dequantize + SDPA: min cosine {cosine:.6f}")
        except Exception as exc:  # e.g. a build without the CUDA kernel: reported, not hidden
            op, shown = "packed_attention failed: " + timing.compile_failure(exc), "n/a"
        yield harness.Case(
            cells=(config, str(shape.batch), str(shape.tokens),
                   f"{case.bf16_bytes / 1e6:.2f}", shown),
            op=op,
            baselines=(
                Baseline("bf16 SDPA", case.bf16_sdpa),
                Baseline("deq+SDPA", case.dequantize_sdpa),
            ),
            bytes=case.packed_bytes,
            flops=case.flops,
            notes=tuple(notes),
            spec=config,
        )  # fmt: skip


def targets(
    device: torch.device, measured: list[Measured], copy_bytes_per_s: float | None
) -> list[str]:
    """The issue's targets for this device, each with its verdict; the other device's targets
    as not measured in this run."""
    if device.type == "cuda":
        return [*_gpu_targets(measured, copy_bytes_per_s), _cpu_title() + _NOT_HERE["cpu"]]
    gpu_titles = [_gpu_title(*target) for target in GPU_TARGETS]
    return [*(title + _NOT_HERE["cuda"] for title in gpu_titles), *_cpu_targets(measured)]


_NOT_HERE = {
    "cpu": ": not measured in this run (needs --device cpu)",
    "cuda": ": not measured in this run (needs --device cuda)",
}


def _gpu_title(config: str, what: str, threshold: float) -> str:
    bar = f"{threshold:.0%}" if "fraction" in what else f"{threshold:g}x"
    return f"target GPU: {config} at {GPU_TARGET_TOKENS} tokens, {what} >= {bar}"


def _cpu_title() -> str:
    what, threshold = CPU_TARGET
    return f"target CPU: at {CPU_TARGET_TOKENS} tokens, {what} >= {threshold:g}x"


def _gpu_targets(measured: list[Measured], copy_bytes_per_s: float | None) -> list[str]:
    lines = []
    for config, what, threshold in GPU_TARGETS:
        title = _gpu_title(config, what, threshold)
        rows = [m for m in measured if m.spec == config and m.shape.tokens == GPU_TARGET_TOKENS]
        if not rows:
            lines.append(f"{title}: not measured in this run (needs T={GPU_TARGET_TOKENS})")
        for item in rows:
            percent = "fraction" in what
            value = (
                item.copy_fraction(copy_bytes_per_s) if percent else item.speedup_over("bf16 SDPA")
            )
            shown = harness.verdict(value, threshold, percent)
            lines.append(f"{title}, B={item.shape.batch}: {shown}")
    return lines


def _cpu_targets(measured: list[Measured]) -> list[str]:
    title = _cpu_title()
    rows = [m for m in measured if m.shape.tokens == CPU_TARGET_TOKENS]
    if not rows:
        return [f"{title}: not measured in this run (needs T={CPU_TARGET_TOKENS})"]
    lines = []
    for item in rows:
        speedup = item.speedup_over("deq+SDPA")
        shown = harness.verdict(speedup, CPU_TARGET[1])
        lines.append(f"{title}, {item.spec} B={item.shape.batch}: {shown}")
    return lines


def facts(shapes: list[DecodeShape]) -> list[tuple[str, str]]:
    """The attention shape, the configurations and how each call is made and costed."""
    configs = "; ".join(
        f"{name}: key_bits {c.key_bits:g}, value_bits {c.value_bits:g}, group {c.group_size}, "
        f"residual {c.residual_length}, key_transform {c.key_transform}, value_axis "
        f"{c.value_axis}, scales {c.scale_dtype}"
        for name, c in CONFIGS.items()
    )
    method = (
        "packed = ops.packed_attention(q, layer); bf16 SDPA = scaled_dot_product_attention over "
        "the unquantized cache (flash backend with enable_gqa on CUDA, plain SDPA on the CPU); "
        "deq+SDPA = layer.dequantized() then scaled_dot_product_attention(enable_gqa=True), "
        "default backend; the three timed in alternation. Bytes: packed = layer.nbytes() + q + "
        f"out, bf16 = 2*B*{KV_HEADS}*T*{HEAD_DIM}*2 + q + out; FLOPs 4*B*{Q_HEADS}*T*{HEAD_DIM}. "
        f"Cosine: smallest over output rows, packed vs deq+SDPA (must be > {MIN_COSINE})"
    )
    return [
        *harness.shape_facts(shapes),
        (
            "attention",
            f"Qwen2.5-VL-7B: q [B, {Q_HEADS}, 1, {HEAD_DIM}] (decode), cache "
            f"[B, {KV_HEADS}, T, {HEAD_DIM}], bfloat16",
        ),
        ("configs", configs),
        ("method", method),
    ]


TITLE = "Packed attention decode benchmark"
COLUMNS = text_columns("config") + number_columns("B", "T", "bf16 MB", "min cos vs deq")
