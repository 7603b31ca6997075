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


def stage_names(model) -> list[str]:
    from vidllm_ext.integration.patching import patch_of

    stages = patch_of(model).decoder_stages()
    return [getattr(stage, "func", stage).__name__ for stage in stages]


def test_the_decoder_stages_run_in_the_stated_order():
    from support.models import build_model

    model = build_model("qwen2_5_vl")
    dtd, merge = vidllm_ext.DTDConfig(threshold=0.9), vidllm_ext.MergeConfig(4, 8, 1)
    kv = vidllm_ext.KVQuantConfig(1.5, 1.58, salient_ratio=0.25)
    vidllm_ext.patch(model, dtd=dtd, merge=merge, kv=kv)
    assert stage_names(model) == [
        "_shorten_video_tokens",  # frame drop, then merging
        "require_packed_cache",
        "_mark_salient_tokens",  # sees the tokens the video-token stages kept
    ]
    vidllm_ext.patch(model, dtd=dtd, mod=vidllm_ext.MoDConfig(keep_ratio=0.5))
    assert stage_names(model) == ["_shorten_video_tokens", "before_decoder"]  # routing last
    vidllm_ext.patch(model)
    assert stage_names(model) == []
    hooks = model.model.language_model._forward_pre_hooks
    assert not hooks, "with every technique off the decoder gets no hook"
    vidllm_ext.unpatch(model)


def test_each_technique_keeps_its_own_state():
    from support.models import build_model

    from vidllm_ext.integration.patching import patch_of

    model = build_model("qwen2_5_vl")
    vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold=0.9))
    state = patch_of(model)
    assert state.frame_drop.config.threshold == 0.9 and state.frame_drop.stats is None
    assert state.token_merge is None and state.routing is None and state.kv_quant is None
    assert state.config("dtd") is state.frame_drop.config and state.config("merge") is None
