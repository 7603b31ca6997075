"""vidllm_ext.testing.emulated_cuda: arguments, nesting, and the error of a build without it."""

import pytest
import torch

import vidllm_ext
from vidllm_ext import ops, testing

EMULATION = vidllm_ext.build_info()["cuda_emulation"]


def test_build_info_reports_emulation():
    assert isinstance(EMULATION, bool)
    assert testing.emulation_compiled() == EMULATION


@pytest.mark.parametrize("schedule,seed", [("sideways", 0), ("forward", -1), ("random", 1.5)])
def test_bad_arguments_are_value_errors(schedule, seed):
    with pytest.raises(ValueError, match=r"schedule|seed"), testing.emulated_cuda(schedule, seed):
        pass


def test_build_without_emulation_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(testing, "emulation_compiled", lambda: False)
    with pytest.raises(RuntimeError, match="VIDLLM_CUDA_EMULATION=1"), testing.emulated_cuda():
        pass


@pytest.mark.skipif(not EMULATION, reason="needs a VIDLLM_CUDA_EMULATION=1 build")
def test_contexts_nest_and_restore():
    assert not testing.emulation_enabled()
    with testing.emulated_cuda("reverse"):
        with testing.emulated_cuda("random", 3):
            assert testing.emulation_enabled()
        assert testing.emulation_enabled()
    assert not testing.emulation_enabled()
    with pytest.raises(KeyError), testing.emulated_cuda():
        raise KeyError("left by an exception")
    assert not testing.emulation_enabled()


@pytest.mark.skipif(not EMULATION, reason="needs a VIDLLM_CUDA_EMULATION=1 build")
def test_an_op_under_the_emulator_matches_its_cpu_twin():
    frames = torch.randn(3, 50, 40, generator=torch.Generator().manual_seed(0))
    cpu = ops.dtd_scores(frames)
    with testing.emulated_cuda("random", 1):
        emulated = ops.dtd_scores(frames)
    assert emulated.device.type == "cpu"
    torch.testing.assert_close(emulated, cpu, rtol=1e-6, atol=1e-6, equal_nan=True)
