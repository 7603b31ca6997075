"""One small call of every kernel family on the emulator against its CPU twin.

Small enough to run under AddressSanitizer in CI (.ci/sanitize.sh runs tests/emulator on the
sanitized emulation build), so that every family's CUDA kernels, launchers and shared memory are
instrumented at least once there; the full comparisons are the CUDA-marked op tests."""

import pytest
import torch
from support.helpers import leaves

import vidllm_ext
from vidllm_ext import KVQuantConfig, PackedKVCache, ops, testing

pytestmark = pytest.mark.skipif(
    not vidllm_ext.build_info()["cuda_emulation"], reason="needs a VIDLLM_CUDA_EMULATION=1 build"
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def packed_layer():
    cache = PackedKVCache(KVQuantConfig(1.5, 1.58, group_size=4, residual_length=4))
    cache.update(randn(1, 2, 13, 16, seed=1), randn(1, 2, 13, 16, seed=2), 0)
    return cache.layers[0]


CALLS = {
    "dtd_keep_mask": lambda: ops.dtd_keep_mask(randn(4, 37, 24), 0.2),
    "compact_tokens": lambda: ops.compact_tokens(randn(4, 37, 24), randn(4, 37, seed=1) > 0),
    "bipartite_soft_matching": lambda: ops.bipartite_soft_matching(randn(2, 21, 8), 5),
    "merge_wavg": lambda: ops.merge_wavg(
        ops.bipartite_soft_matching(randn(2, 21, 8), 5), randn(2, 21, 8, seed=1)
    ),
    "hierarchical_merge": lambda: ops.hierarchical_merge(
        randn(5, 12, 8), frames_per_segment=2, tokens_per_segment=6, metric_chunks=2
    ),
    "topk_per_segment": lambda: ops.topk_per_segment(randn(40), torch.tensor([0, 7, 25, 40]), 0.3),
    "gather_scatter_rows": lambda: ops.scatter_add_rows(
        randn(9, 16),
        torch.tensor([1, 4, 4, 8]),
        ops.gather_rows(randn(9, 16), torch.tensor([0, 2, 4, 8])),
    ),
    "pack_bits": lambda: ops.unpack_bits(
        ops.pack_bits((torch.arange(37) % 4).to(torch.uint8), 2), 2, 37
    ),
    "pack_trits": lambda: ops.unpack_trits(
        ops.pack_trits((torch.arange(37) % 3 - 1).to(torch.int8)), 37
    ),
    "quantize_keys": lambda: ops.dequantize_keys(
        ops.quantize_keys(randn(1, 2, 13, 16), KVQuantConfig(1.5, 1.58, group_size=4))
    ),
    "quantize_values": lambda: ops.dequantize_values(
        ops.quantize_values(randn(1, 2, 13, 16), KVQuantConfig(1.5, 1.58, group_size=4))
    ),
    "packed_attention": lambda: ops.packed_attention(randn(1, 2, 3, 16, seed=3), packed_layer()),
}


@pytest.mark.parametrize("family", list(CALLS))
def test_every_family_matches_its_cpu_twin_on_the_emulator(family):
    expected = CALLS[family]()
    with testing.emulated_cuda("random", 1):
        got = CALLS[family]()
    got, expected = leaves(got), leaves(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
        else:
            assert a == b
