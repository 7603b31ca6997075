"""Cases of the packed-attention benchmarks: one decode step (Lq = 1) of one layer at the
Qwen2.5-VL-7B attention shape over a cache of T tokens, three ways, and the cost model. Shared by
the suite (kv_attention_suite.py) and the pytest-benchmark smoke test
(test_kv_attention_cpu.py).

The three calls, on the same query ``q [B, Hq, 1, D]`` (bfloat16):

- ``packed``: ``ops.packed_attention(q, layer)`` over a :class:`vidllm_ext.PackedKVCache` layer,
  reading codes, statistics and the full-precision window;
- ``bf16 SDPA``: ``scaled_dot_product_attention`` over the unquantized bfloat16 keys and values
  ``[B, Hkv, T, D]`` the cache was fed (flash backend on CUDA), the cost of not quantizing;
- ``dequantize + SDPA``: ``layer.dequantized()`` (keys and values ``[B, Hkv, T, D]`` in bfloat16)
  then ``scaled_dot_product_attention(q, k, v, enable_gqa=True)``, the cost of quantizing without
  a fused kernel.

Cost model (bytes each call must read and write; Hkv KV heads, Hq query heads, head_dim D):

- packed: ``layer.nbytes()`` (codes, scales, zero points, channel split and the bfloat16 window)
  + q + output (``2 * B * Hq * D * 2``);
- bf16 SDPA: ``2 * B * Hkv * T * D * 2`` (keys and values) + q + output;
- dequantize + SDPA: packed's bytes + the bfloat16 keys and values written and read again;
- FLOPs (any of them): ``4 * B * Hq * T * D`` (q.k and p.v, a multiply-add as 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidllm_ext import KVQuantConfig, PackedKVCache, ops

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


@dataclass
class Case:
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


def kv_like(shape: tuple[int, ...], device: torch.device | str, generator) -> torch.Tensor:
    """Normal values times a per-channel scale from 0.1 to 30 (outlier channels), float32."""
    scale = torch.empty(shape[-1], device=device).uniform_(-2.3, 3.4, generator=generator).exp()
    return torch.randn(shape, generator=generator, device=device) * scale


def build_case(config: str, batch: int, tokens: int, device: torch.device | str) -> Case:
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
        keys[:, :, start:stop] = kv_like(part, device, generator).to(DTYPE)
        values[:, :, start:stop] = torch.randn(part, generator=generator, device=device).to(DTYPE)
        cache.update(keys[:, :, start:stop], values[:, :, start:stop], 0)
    q = torch.randn(batch, Q_HEADS, 1, HEAD_DIM, generator=generator, device=device).to(DTYPE)
    bf16_sdpa, note = _bf16_sdpa(q, keys, values)
    return Case(config, batch, tokens, q, keys, values, cache.layers[0], bf16_sdpa, note)


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
