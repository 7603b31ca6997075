import pytest
import torch

import vidllm_ext


def cuda_usable() -> bool:
    return vidllm_ext.build_info()["cuda_compiled"] and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    reason = "needs a CUDA GPU and a build with CUDA kernels"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


# Every test that takes `device` runs on the CPU, and on CUDA when a GPU is at hand.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
