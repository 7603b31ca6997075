"""The CUDA emulator's checks: each fault a GPU run would hide, planted in a small kernel of
csrc/cuda_emulator/tests/test_kernels.cu, must raise RuntimeError naming the kernel and the
fault, under every schedule."""

import pytest

import vidllm_ext
from vidllm_ext._extension import _C
from vidllm_ext.testing import SCHEDULES, emulated_cuda

pytestmark = pytest.mark.skipif(
    not vidllm_ext.build_info()["cuda_emulation"], reason="needs a VIDLLM_CUDA_EMULATION=1 build"
)


def run(name, schedule="forward", seed=0):
    with emulated_cuda(schedule, seed):
        return _C._emulator_test_kernel(name)


FAULTS = {
    "divergent_barrier": r"divergent_barrier_kernel .*block \(0, 0, 0\): __syncthreads not "
    r"reached by every live thread: thread \d+ waits at .*test_kernels.cu:\d+, thread \d+ at "
    r".*test_kernels.cu:\d+",
    "missing_lane": r"missing_lane_kernel .*__shfl_xor_sync with mask 0xffffffff, but lane 7 "
    r"\(thread 7\) did not arrive: it waits at the barrier",
    "exited_lane": r"exited_lane_kernel .*__shfl_sync with mask 0xffffffff naming lane 3 "
    r"\(thread 3\), which has exited",
    "block_too_large": r"empty_kernel .*a block of 1025 threads is too large: at most 1024",
    "grid_y_too_large": r"empty_kernel .*gridDim.y = 65536, gridDim.z = 1: each must be at most "
    r"65535",
    "grid_z_too_large": r"gridDim.y = 1, gridDim.z = 65536: each must be at most 65535",
    "shared_without_attribute": r"shared_poison_kernel .*49168 bytes of dynamic shared memory "
    r"exceed the kernel's limit of 49152 bytes \(48 KiB unless cudaFuncSetAttribute",
    "shared_over_optin": r"232464 bytes of dynamic shared memory exceed the sm_90 opt-in limit "
    r"of 232448 bytes",
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", FAULTS)
def test_planted_fault_raises_naming_kernel_and_fault(name, schedule):
    with pytest.raises(RuntimeError, match=FAULTS[name]):
        run(name, schedule)
    # The fault is reported once; the next launch runs normally.
    assert run("grid_y_at_limit", schedule)[0] == 1


def test_launch_limits_are_inclusive():
    assert run("grid_y_at_limit")[0] == 1


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_dynamic_shared_memory_is_poisoned_before_each_block(schedule):
    # Three blocks each read 32 bytes before writing zeros: every read sees the poison 0xFF.
    assert run("shared_poison", schedule)[:96] == [0xFF] * 96


def test_function_attribute_raises_the_dynamic_shared_limit():
    assert run("shared_with_attribute")[:64] == [0xFF] * 64


def test_unknown_test_kernel_is_a_value_error():
    with pytest.raises(ValueError, match="unknown emulator test kernel"):
        run("no_such_kernel")
