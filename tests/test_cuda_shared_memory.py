"""Kernels that opt in to more than 48 KiB of dynamic shared memory, launched from several host
threads at once (the bindings release the GIL) with different sizes. The limit is raised once
per kernel and device, to the device's maximum; when each launch set it to its own need, one
thread could lower it between another's raise and launch, and that launch failed. Skipped
without a GPU."""

import threading

import pytest
import torch

from vidllm_ext import ops

pytestmark = pytest.mark.cuda

# float32 rows of 52 to 144 KiB: one instantiation of the DTD score kernel (feature, float32,
# the same vector width), each size above the 48 KiB default and below A100's opt-in maximum.
DIMS = [13312, 20480, 28672, 36864]


def test_dtd_scores_from_threads_with_different_shared_memory_sizes():
    generator = torch.Generator().manual_seed(0)
    frames = {d: torch.randn(4, 64, d, generator=generator).cuda() for d in DIMS}
    expected = {d: ops.dtd_scores(frames[d][1:], prev=frames[d][0]) for d in DIMS}
    errors, mismatches = [], []
    start = threading.Barrier(len(DIMS))

    def launch_many(dim):
        try:
            start.wait()
            for _ in range(50):
                scores = ops.dtd_scores(frames[dim][1:], prev=frames[dim][0])
                if not torch.equal(scores, expected[dim]):
                    mismatches.append(dim)
        except Exception as exc:  # a refused launch raises RuntimeError naming the kernel
            errors.append(f"dim {dim}: {exc}")

    threads = [threading.Thread(target=launch_many, args=(d,)) for d in DIMS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.cuda.synchronize()
    assert not errors, errors
    assert not mismatches
