"""The patch API's contract: configs, errors and the registry."""

import pytest
import torch
from models import text_only_model

import vidllm_ext

transformers = pytest.importorskip("transformers")


def test_supported_model_types_are_listed_for_an_unsupported_model():
    model = text_only_model()
    with pytest.raises(ValueError, match=r"unsupported model type .llama.*qwen2_5_vl"):
        vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(threshold=1.5), r"cosine similarity in \[-1, 1\]"),
        (dict(threshold=-0.5, method="pixel"), "mean absolute difference >= 0"),
        (dict(threshold=2.0, mode="relative"), r"fraction in \[0, 1\]"),
        (dict(method="optical-flow"), "method: expected 'feature' or 'pixel'"),
        (dict(mode="adaptive"), "mode: expected 'absolute' or 'relative'"),
    ],
)
def test_bad_dtd_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vidllm_ext.DTDConfig(**kwargs)


@pytest.mark.parametrize("name", ["merge", "mod"])
def test_later_features_raise_not_implemented(name):
    with pytest.raises(NotImplementedError, match=rf"{name}=: .* is not implemented yet"):
        vidllm_ext.patch(torch.nn.Linear(1, 1), **{name: object()})


def test_dtd_must_be_a_config():
    with pytest.raises(TypeError, match=r"dtd: expected a vidllm_ext\.DTDConfig"):
        vidllm_ext.patch(torch.nn.Linear(1, 1), dtd=0.5)


def test_last_stats_needs_a_patched_model():
    with pytest.raises(ValueError, match="not patched"):
        vidllm_ext.last_stats(torch.nn.Linear(1, 1))
