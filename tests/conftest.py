"""Where the CUDA-marked tests run: on a GPU when one is usable, else on the host emulator of the
CUDA execution model when the build has it (VIDLLM_CUDA_EMULATION=1), else they are skipped.

On the emulator the CUDA side of a test uses CPU tensors inside
``vidllm_ext.testing.emulated_cuda(schedule, seed)``, so the CUDA launchers and kernels run on
the host. The schedule comes from ``--emulator-schedule`` (or VIDLLM_EMULATOR_SCHEDULE),
the seed from ``--emulator-seed`` (or VIDLLM_EMULATOR_SEED).
"""

import contextlib
import os
import types
import zlib

import pytest
import torch

import vidllm_ext
from vidllm_ext.testing import SCHEDULES, emulated_cuda


def cuda_usable() -> bool:
    return vidllm_ext.build_info()["cuda_compiled"] and torch.cuda.is_available()


# "gpu", "emulator" or None (CUDA tests skipped).
CUDA_TARGET = (
    "gpu" if cuda_usable() else "emulator" if vidllm_ext.build_info()["cuda_emulation"] else None
)
# The device of the CUDA side's tensors: the GPU, or host memory for the emulator.
CUDA_DEVICE = "cpu" if CUDA_TARGET == "emulator" else "cuda"

_emulator = {"schedule": "forward", "seed": 0}


# The emulator's integer command-line options: (option, environment variable, default, help).
EMULATOR_OPTIONS = (
    ("--emulator-seed", "VIDLLM_EMULATOR_SEED", 0, "seed of the emulator's random schedule"),
    (
        "--emulator-sample",
        "VIDLLM_EMULATOR_SAMPLE",
        1,
        "on the emulator, run a fixed 1-in-N share of the CUDA tests (1: all)",
    ),
    (
        "--emulator-share",
        "VIDLLM_EMULATOR_SHARE",
        0,
        "which of the N shares of --emulator-sample N to run (0 to N - 1)",
    ),
)


def pytest_addoption(parser):
    parser.addoption(
        "--emulator-schedule",
        choices=SCHEDULES,
        default=os.environ.get("VIDLLM_EMULATOR_SCHEDULE", "forward"),
        help="block and thread order of the CUDA emulator for the CUDA tests (no GPU)",
    )
    for option, variable, default, text in EMULATOR_OPTIONS:
        parser.addoption(
            option, type=int, default=int(os.environ.get(variable, str(default))), help=text
        )


def pytest_configure(config):
    _emulator["schedule"] = config.getoption("--emulator-schedule")
    _emulator["seed"] = config.getoption("--emulator-seed")


def pytest_report_header(config):
    if CUDA_TARGET == "emulator":
        where = f"the CUDA emulator, schedule {_emulator['schedule']!r}, seed {_emulator['seed']}"
    else:
        where = {"gpu": "the GPU", None: "nothing (no GPU, no emulation build): skipped"}
        where = where[CUDA_TARGET]
    return f"vidllm_ext CUDA tests run on {where}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_transformers(item.module):
            item.add_marker(pytest.mark.transformers)
    if CUDA_TARGET == "emulator":
        _sample_on_emulator(config, items)
    if CUDA_TARGET is not None:
        return
    reason = "needs a CUDA GPU and a build with CUDA kernels, or a VIDLLM_CUDA_EMULATION=1 build"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _sample_on_emulator(config, items) -> None:
    """``--emulator-sample N`` (or VIDLLM_EMULATOR_SAMPLE) keeps a fixed 1-in-N share of the
    CUDA-marked tests on the emulator, chosen by a hash of the test id (the same share every
    run), so CI covers every family within its time budget; 1 (the default) runs them all.
    ``--emulator-share K`` picks which of the N shares (CI runs a different one per schedule)."""
    every = config.getoption("--emulator-sample")
    if every <= 1:
        return
    share = config.getoption("--emulator-share")
    if not 0 <= share < every:
        raise pytest.UsageError(f"--emulator-share must be in [0, {every - 1}], got {share}")
    reason = f"not in share {share} of the 1-in-{every} emulator sample"
    for item in items:
        digest = zlib.crc32(item.nodeid.encode())
        if "cuda" in item.keywords and digest % every != share:
            item.add_marker(pytest.mark.skip(reason=reason))


# Helper modules of tests/ that build transformers models.
MODEL_HELPERS = (
    "support.models",
    "support.patch_reference",
    "support.caption_task",
    "support.packed_models",
    "support.routed_models",
    "support.streaming",
    "support.training",
)


def _uses_transformers(module) -> bool:
    """Whether a test module uses transformers (directly or through the tiny-model helpers):
    those are the model-level tests CI also runs on the declared transformers floor."""
    for value in vars(module).values():
        if isinstance(value, types.ModuleType):
            name = value.__name__
        else:
            name = getattr(value, "__module__", None) or ""
        if name.split(".")[0] == "transformers" or name in MODEL_HELPERS:
            return True
    return False


@contextlib.contextmanager
def on_cuda():
    """The CUDA side of a test: yields the device for its tensors ("cuda", or "cpu" with the
    emulator switched on until the block ends)."""
    if CUDA_TARGET == "emulator":
        with emulated_cuda(_emulator["schedule"], _emulator["seed"]):
            yield CUDA_DEVICE
    else:
        yield CUDA_DEVICE


def device_context(device: str):
    """`with device_context(device) as d:` for a test that compares devices in one body: "cpu"
    as is, "cuda" through on_cuda()."""
    return on_cuda() if device == "cuda" else contextlib.nullcontext("cpu")


# For the few tests of what only a real GPU does (device-side flagging of values the CPU and the
# emulator check on the host, cuda:N device strings).
gpu_only = pytest.mark.skipif(
    CUDA_TARGET == "emulator",
    reason="GPU-only behaviour: on the emulator the tensors are host tensors",
)


@pytest.fixture(autouse=True)
def _cuda_case_on_emulator(request):
    """The "cuda" case of a DEVICES-parametrized test runs its whole body on the emulator."""
    callspec = getattr(request.node, "callspec", None)
    is_cuda_case = (
        CUDA_TARGET == "emulator"
        and callspec is not None
        and "device" in callspec.params
        and request.node.get_closest_marker("cuda") is not None
    )
    if not is_cuda_case:
        yield
        return
    with on_cuda():
        yield


# Every test that takes `device` runs on the CPU, and on CUDA (a GPU or the emulator).
DEVICES = ["cpu", pytest.param(CUDA_DEVICE, marks=pytest.mark.cuda, id="cuda")]


@pytest.fixture(autouse=True)
def _deprecations_from_vidllm_are_errors():
    """A FutureWarning or DeprecationWarning that vidllm_ext's own code triggers fails the test,
    so the next transformers rename shows up in CI the day it lands (see support/own_warnings)."""
    from support.own_warnings import deprecations_from_vidllm_are_errors

    with deprecations_from_vidllm_are_errors():
        yield
