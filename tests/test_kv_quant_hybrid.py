"""The packed KV cache on hybrid decoders (Qwen3.5: three Gated DeltaNet layers to one full
attention; issue 18, section 3)."""

import pytest
import torch
from support.models import HYBRID_FAMILIES, SyntheticVideo, build_model
from support.packed_models import SMALL, generate_into_packed_cache, two_videos
from support.streaming import TIMESTAMP, answer_in_one_call, feed

import vidllm_ext
from vidllm_ext import KVQuantConfig, PackedKVCache
from vidllm_ext.integration.compat import cache_kwargs
from vidllm_ext.integration.kv_quant_linear_states import is_linear_layer, layer_states

pytest.importorskip("transformers")
FULL_PRECISION = KVQuantConfig(key_bits=16, value_bits=16)


def linear_states(cache):
    """(conv state, recurrent state) of each linear-attention layer."""
    return [tuple(layer_states(layer)) for layer in cache.layers if is_linear_layer(layer)]


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_full_precision_packed_cache_generates_what_the_default_cache_does(family):
    from transformers import DynamicCache

    model, inputs = build_model(family), two_videos(family)
    default = DynamicCache(config=model.config.text_config)
    expected = model.generate(
        **inputs, max_new_tokens=5, do_sample=False, **cache_kwargs(model, default)
    )
    vidllm_ext.patch(model, kv=FULL_PRECISION)
    packed = PackedKVCache(FULL_PRECISION)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, **cache_kwargs(model, packed))
    assert torch.equal(out, expected)
    kinds = [type(layer).__name__ for layer in packed.layers]
    assert kinds == [*(type(layer).__name__ for layer in default.layers[:3]), "PackedKVLayer"]
    assert kinds[:3] == ["LinearAttentionLayer"] * 3
    for (conv, state), (expected_conv, expected_state) in zip(
        linear_states(packed), linear_states(default), strict=True
    ):
        assert torch.equal(conv, expected_conv) and torch.equal(state, expected_state)
    assert packed.get_seq_length() == default.get_seq_length()


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_nbytes_counts_the_states_and_bits_per_element_the_packed_kv_only(family):
    model, _, cache = generate_into_packed_cache(family, SMALL)
    full = cache.layers[3]
    assert full.quantized_length > 0
    states = sum(
        c.numel() * c.element_size() + s.numel() * s.element_size() for c, s in linear_states(cache)
    )
    text = model.config.text_config
    batch, conv_channels = 2, 2 * 2 * 8 + 4 * 8  # q, k (2 heads x 8) and v (4 heads x 8)
    assert states == 4 * batch * (3 * conv_channels * text.linear_conv_kernel_dim + 3 * 4 * 8 * 8)
    assert cache.nbytes() == full.nbytes() + states
    expected_bits = 8 * full.quantized_nbytes() / full.quantized_elements()
    assert cache.bits_per_element() == pytest.approx(expected_bits)


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_beam_search_reorders_the_packed_kv_and_the_states(family):
    model, inputs = build_model(family), two_videos(family)
    vidllm_ext.patch(model, kv=SMALL)
    cache = PackedKVCache(SMALL)
    out = model.generate(
        **inputs, max_new_tokens=4, do_sample=False, num_beams=2, **cache_kwargs(model, cache)
    )
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)
    assert cache.layers[3].quantized_length > 0
    assert all(conv.shape[0] == 4 for conv, _ in linear_states(cache))  # 2 samples x 2 beams
    vidllm_ext.patch(model, kv=FULL_PRECISION)
    expected = build_model(family).generate(
        **inputs, max_new_tokens=4, do_sample=False, num_beams=2
    )
    assert torch.equal(
        model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2), expected
    )


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_streaming_session_with_the_packed_cache(family):
    model = build_model(family)
    video = SyntheticVideo(steps=4)
    expected = answer_in_one_call(model, family, video)
    session = vidllm_ext.StreamingSession(
        model, dtd=None, kv=FULL_PRECISION, timestamp_ids=lambda step: TIMESTAMP
    )
    assert isinstance(session.cache, PackedKVCache)
    feed(session, video, [3, 1])
    answer = session.ask([50, 51, 52], max_new_tokens=6)
    assert torch.equal(answer, expected[: answer.numel()])

    quantized = vidllm_ext.StreamingSession(
        model, dtd=None, kv=SMALL, timestamp_ids=lambda s: TIMESTAMP
    )
    feed(quantized, video, [1, 1, 2])
    assert quantized.ask([50, 51, 52], max_new_tokens=3).numel() >= 1
    assert quantized.cache.layers[3].quantized_length > 0
    assert len(linear_states(quantized.cache)) == 3
