"""The patch API's contract: configs, errors and the registry."""

import pytest
import torch
from support.models import text_only_model

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


@pytest.mark.parametrize(
    "name,config", [("dtd", "DTDConfig"), ("merge", "MergeConfig"), ("mod", "MoDConfig")]
)
def test_techniques_take_their_config(name, config):
    with pytest.raises(TypeError, match=rf"{name}: expected a vidllm_ext\.{config}"):
        vidllm_ext.patch(torch.nn.Linear(1, 1), **{name: 0.5})


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(frames_per_segment=0), ValueError, "frames_per_segment: expected an int >= 1"),
        (dict(tokens_per_segment=-3), ValueError, "tokens_per_segment: expected an int >= 1"),
        (dict(metric_chunks=2.0), TypeError, "metric_chunks: expected an int"),
        (dict(frames_per_segment=True), TypeError, "frames_per_segment: expected an int"),
    ],
)
def test_bad_merge_config(kwargs, error, message):
    with pytest.raises(error, match=message):
        vidllm_ext.MergeConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(keep_ratio=1.5), ValueError, r"keep_ratio: expected a fraction in \[0, 1\]"),
        (dict(keep_ratio=float("nan")), ValueError, "keep_ratio"),
        (dict(gate="softmax"), ValueError, "gate: expected one of"),
        (dict(layers="odd"), ValueError, "layers: expected 'interleaved'"),
        (dict(layers=[1, -1]), ValueError, "non-negative int layer indices"),
        (dict(layers=[3, 3]), ValueError, "listed twice"),
        (dict(layers=2), TypeError, "layers: expected 'interleaved' or a sequence"),
    ],
)
def test_bad_mod_config(kwargs, error, message):
    with pytest.raises(error, match=message):
        vidllm_ext.MoDConfig(**kwargs)


def test_mod_layers_are_sorted():
    assert vidllm_ext.MoDConfig(layers=[5, 1, 3]).layers == (1, 3, 5)


def test_merge_metric_chunks_must_divide_the_hidden_size():
    from support.models import build_model

    model = build_model("qwen2_5_vl")  # hidden size 64
    with pytest.raises(ValueError, match=r"metric_chunks: 48 does not divide .* hidden size 64"):
        vidllm_ext.patch(model, merge=vidllm_ext.MergeConfig(metric_chunks=48))
    assert not hasattr(model, "_vidllm_patch")


def test_last_stats_names_the_techniques():
    from support.models import build_model

    model = vidllm_ext.patch(build_model("qwen2_5_vl"), merge=vidllm_ext.MergeConfig())
    assert vidllm_ext.last_stats(model, "merge") is None
    with pytest.raises(ValueError, match="technique: expected one of dtd, merge, mod"):
        vidllm_ext.last_stats(model, "drop")


def test_last_stats_needs_a_patched_model():
    with pytest.raises(ValueError, match="not patched"):
        vidllm_ext.last_stats(torch.nn.Linear(1, 1))
