"""The transformers seam (vidllm_ext.integration.compat) and the checks built on it."""

import os
import warnings

import pytest
import torch
from support.models import SyntheticVideo, build_model, make_inputs
from support.own_warnings import PACKAGE_DIR

import vidllm_ext
from vidllm_ext.integration import compat
from vidllm_ext.integration.registry import adapter_for
from vidllm_ext.integration.sequence import TechniqueInactive


def test_cache_keyword_follows_the_signature():
    def new_style(hidden, cache=None, **kwargs): ...

    def old_style(hidden, past_key_values=None, **kwargs): ...

    assert compat.cache_parameter(new_style) == "cache"
    assert compat.cache_parameter(old_style) == "past_key_values"
    kwargs = {"past_key_values": "c", "other": 1}
    assert compat.with_cache(kwargs, "d", new_style) == {"other": 1, "cache": "d"}
    assert compat.cache_from({"cache": None, "past_key_values": "x"}) == "x"
    assert compat.pop_cache({"cache": "y"}) == "y"


def test_the_installed_release_takes_the_keyword_we_pass():
    model = build_model("qwen2_5_vl")
    name = compat.cache_parameter(model.forward)
    assert name in compat.CACHE_NAMES
    assert list(vidllm_ext.cache_kwargs(model, "c")) == [name]


@pytest.mark.parametrize(
    "version, inside",
    [
        ("5.12.0", True),
        ("5.25.0", True),
        ("5.99.1", True),
        ("5.11.0", False),
        ("6.0.0", False),
        ("4.57.1", False),
        ("5.30.0.dev0", True),
    ],
)
def test_tested_window(version, inside):
    assert compat.in_tested_window(version) is inside


def test_outside_the_window_patch_warns_once(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda: "5.3.0")
    monkeypatch.setattr(compat, "_warned", set())
    model = build_model("qwen2_5_vl")
    with pytest.warns(UserWarning, match="transformers 5.3.0 is installed"):
        vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(0.5))  # once: no second warning


def test_a_deprecation_our_code_triggers_is_an_error():
    """The conftest guard: code in the package that triggers a FutureWarning fails the test,
    even when a library between us and the warning attributes it to itself."""
    source = "import warnings\ndef call():\n    warnings.warn('renamed', FutureWarning)\n"
    scope = {}
    exec(compile(source, os.path.join(PACKAGE_DIR, "_pretend_module.py"), "exec"), scope)
    with pytest.raises(FutureWarning, match="vidllm_ext's own call"):
        scope["call"]()
    exec(compile(source, os.path.join(os.path.dirname(__file__), "_elsewhere.py"), "exec"), scope)
    with pytest.warns(FutureWarning):  # a test's own deprecated call only warns
        scope["call"]()


def video_batch():
    return make_inputs("qwen2_5_vl", [SyntheticVideo(), SyntheticVideo(seed=1)], [3, 5])


def _lose_video_grids(model):
    """A release whose generate passes videos some other way: the patch records no grids."""
    adapter = model._vidllm_patch.adapter
    capture, encoder_inputs = adapter.capture, adapter.video_encoder_inputs

    def without_grids(record):
        def recorded(*args):
            return {k: None if "grid" in k else v for k, v in record(*args).items()}

        return recorded

    adapter.capture = without_grids(capture)
    adapter.video_encoder_inputs = without_grids(encoder_inputs)


@pytest.mark.parametrize(
    "technique, config",
    [
        ("dtd", {"dtd": vidllm_ext.DTDConfig(0.5)}),
        ("merge", {"merge": vidllm_ext.MergeConfig(2, 8, metric_chunks=1)}),
        ("mod", {"mod": vidllm_ext.MoDConfig(keep_ratio=0.5)}),
    ],
)
def test_a_shortening_technique_that_cannot_see_the_videos_raises(technique, config):
    model, inputs = build_model("qwen2_5_vl"), video_batch()
    vidllm_ext.patch(model, **config)
    _lose_video_grids(model)
    with pytest.raises(TechniqueInactive, match=rf"^{technique}: .*video tokens"):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_a_packed_kv_patch_given_another_cache_raises():
    from transformers import DynamicCache

    model, inputs = build_model("qwen2_5_vl"), video_batch()
    vidllm_ext.patch(model, kv=vidllm_ext.KVQuantConfig(2, 2, group_size=4, residual_length=4))
    cache = DynamicCache(config=model.config.get_text_config())
    with pytest.raises(TechniqueInactive, match=r"^kv: .*DynamicCache"):
        model.generate(
            **inputs, max_new_tokens=2, do_sample=False, **vidllm_ext.cache_kwargs(model, cache)
        )


def test_a_packed_kv_patch_makes_its_cache_for_a_plain_forward():
    model, inputs = build_model("qwen2_5_vl"), video_batch()
    vidllm_ext.patch(model, kv=vidllm_ext.KVQuantConfig(2, 2, group_size=4, residual_length=4))
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
    assert isinstance(compat.output_cache(output), vidllm_ext.PackedKVCache)
    assert adapter_for(model) is not None


def test_our_cache_layers_implement_the_installed_interface():
    from vidllm_ext.integration.kv_quant_cache import PackedKVLayer

    assert compat.missing_layer_methods(PackedKVLayer) == []
    assert PackedKVLayer(vidllm_ext.KVQuantConfig(2, 2)).get_max_cache_shape() == -1
