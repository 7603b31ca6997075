import types

import pytest
import torch

import vidllm_ext


def cuda_usable() -> bool:
    return vidllm_ext.build_info()["cuda_compiled"] and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_transformers(item.module):
            item.add_marker(pytest.mark.transformers)
    if cuda_usable():
        return
    reason = "needs a CUDA GPU and a build with CUDA kernels"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


# Helper modules of tests/ that build transformers models.
MODEL_HELPERS = ("models", "patch_reference", "caption_task")


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


# Every test that takes `device` runs on the CPU, and on CUDA when a GPU is at hand.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(autouse=True)
def _deprecations_from_vidllm_are_errors():
    """A FutureWarning or DeprecationWarning that vidllm_ext's own code triggers fails the test,
    so the next transformers rename shows up in CI the day it lands (see support/own_warnings)."""
    from support.own_warnings import deprecations_from_vidllm_are_errors

    with deprecations_from_vidllm_are_errors():
        yield
