"""The CUDA emulator's schedules and collectives: block order and thread resume order follow the
schedule, warp collectives and cub block collectives compute what CUDA and cub define, and cub's
contract (no barrier after a collective) is enforced by the schedules."""

import pytest

import vidllm_ext
from vidllm_ext._extension import _C
from vidllm_ext.testing import SCHEDULES, emulated_cuda

pytestmark = pytest.mark.skipif(
    not vidllm_ext.build_info()["cuda_emulation"], reason="needs a VIDLLM_CUDA_EMULATION=1 build"
)

BLOCKS, THREADS = 8, 64


def run(name, schedule="forward", seed=0):
    with emulated_cuda(schedule, seed):
        return _C._emulator_test_kernel(name)


def order_log(schedule, seed=0):
    """Per block (in run order): its index, then the thread order at start, after a barrier and
    after a __syncwarp."""
    out = run("order", schedule, seed)
    entries = out[1 : 1 + out[0]]
    assert len(entries) == BLOCKS * (1 + 3 * THREADS)
    step = 1 + 3 * THREADS
    blocks = []
    for b in range(BLOCKS):
        chunk = entries[b * step : (b + 1) * step]
        phases = [[e % 1000 for e in chunk if e // 1000 == k] for k in (1, 2, 3)]
        blocks.append((chunk[0], phases))
    return blocks


def test_forward_and_reverse_orders():
    forward, reverse = order_log("forward"), order_log("reverse")
    assert [b for b, _ in forward] == list(range(BLOCKS))
    assert [b for b, _ in reverse] == list(reversed(range(BLOCKS)))
    for _, phases in forward:
        assert phases == [list(range(THREADS))] * 3
    for _, phases in reverse:
        assert phases == [list(reversed(range(THREADS)))] * 3


def test_random_order_is_a_seeded_shuffle():
    first, again, other = order_log("random", 7), order_log("random", 7), order_log("random", 8)
    assert first == again and first != other
    assert sorted(b for b, _ in first) == list(range(BLOCKS))
    assert [b for b, _ in first] != list(range(BLOCKS))
    for _, phases in first:
        assert all(sorted(p) == list(range(THREADS)) for p in phases)
        assert any(p != sorted(p) for p in phases)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warp_collectives_and_predicate_barriers(schedule):
    out = run("collectives", schedule)
    for t in range(THREADS):
        lane, warp_base = t % 32, t // 32 * 32
        ballot = sum(1 << i for i in range(32) if i % 3 == 0)
        match = sum(1 << i for i in range(32) if i % 4 == lane % 4)
        expected = [
            (1 << 40) + warp_base + 31 - lane,  # __shfl_sync of 64 bits
            warp_base + (lane ^ 5),  # __shfl_xor_sync
            t + 3 if lane + 3 < 32 else t,  # __shfl_down_sync: past the warp keeps its own
            t - 2 if lane >= 2 else t,  # __shfl_up_sync
            ballot,
            match,
            1,  # __syncthreads_or: thread 40's predicate
            THREADS // 2,  # __syncthreads_count
            1,  # __syncthreads_and
        ]
        assert out[9 * t : 9 * t + 9] == expected, t


def exact_scans():
    """Per thread t: the exclusive sum of ones (t), its aggregate, then the exclusive sum of the
    thread indices."""
    return [v for t in range(THREADS) for v in (t, THREADS, t * (t - 1) // 2)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_scan_reused_after_a_barrier_is_exact(schedule):
    out = run("scan_reuse_with_barrier", schedule)
    assert out[: 3 * THREADS] == exact_scans()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_scan_reused_without_a_barrier_shows_the_race(schedule):
    """cub's contract: a collective ends without a barrier, so reusing its storage needs one.
    The emulator lets the first resumed thread run into the second scan before the others read
    the first, so the missing barrier corrupts results under every schedule."""
    out = run("scan_reuse_without_barrier", schedule)
    assert out[: 3 * THREADS] != exact_scans()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_reduce_sum_is_valid_in_thread_0_only(schedule):
    out = run("block_reduce", schedule)
    assert out[0] == THREADS * (THREADS + 1) // 2
    assert out[1:THREADS] == [2**31 - 1] * (THREADS - 1)
