"""patch(model, kv=...): generate and the streaming session use the packed cache by default."""

import math

import pytest
import torch
from support.models import FAMILIES, SyntheticVideo, build_model
from support.packed_models import SMALL, generate_into_packed_cache, two_videos
from support.streaming import TIMESTAMP, feed

import vidllm_ext
from vidllm_ext import KVQuantConfig, PackedKVCache
from vidllm_ext.integration.compat import cache_from, cache_kwargs
from vidllm_ext.integration.kv_quant_cache import PackedKVLayer

SALIENT = KVQuantConfig(1.5, 1.58, group_size=4, residual_length=8, salient_ratio=0.2)


def first_kv_layer(cache):
    """The first layer holding packed KV (Qwen3.5's first three layers are linear attention)."""
    return next(layer for layer in cache.layers if isinstance(layer, PackedKVLayer))


def caches_seen(model):
    """Records the cache object every decoder forward receives."""
    seen = []
    adapter = vidllm_ext.integration.registry.adapter_for(model)
    hook = adapter.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(cache_from(kwargs)), with_kwargs=True
    )
    return seen, hook


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_defaults_to_the_packed_cache_and_unpatch_restores(family):
    model, inputs = build_model(family), two_videos(family)
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    full_precision = KVQuantConfig(key_bits=16, value_bits=16)
    vidllm_ext.patch(model, kv=full_precision)
    seen, hook = caches_seen(model)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, expected)  # 16/16: exactly the unpatched tokens
    assert seen and all(isinstance(c, PackedKVCache) for c in seen)
    vidllm_ext.patch(model, kv=SMALL)
    seen.clear()
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=2)
    assert out.shape == expected.shape
    assert seen[-1].config == SMALL and first_kv_layer(seen[-1]).quantized_length > 0
    mine = PackedKVCache(SMALL)
    model.generate(**inputs, max_new_tokens=2, do_sample=False, **cache_kwargs(model, mine))
    assert seen[-1] is mine  # a cache the caller gives wins
    vidllm_ext.unpatch(model)
    seen.clear()
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert not any(isinstance(c, PackedKVCache) for c in seen)
    assert "generate" not in vars(model)
    hook.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_salient_video_tokens_are_marked_per_sample(family):
    model, inputs, cache = generate_into_packed_cache(family, SALIENT)
    ids = inputs["input_ids"]
    video = ids == model.config.video_token_id if family != "llava_onevision" else None
    if video is None:
        video = ids == model.config.video_token_index
    marked = cache.salient.mask[:, : ids.shape[1]]
    for row in range(2):
        assert int(marked[row].sum()) == math.ceil(0.2 * int(video[row].sum()))
        assert bool(video[row][marked[row]].all())  # only video tokens
    values = first_kv_layer(cache).value_blocks[0]  # the prefill's block
    assert values.salient_index is not None


def test_salient_tokens_follow_dtd():
    family = "qwen2_5_vl"
    dtd = vidllm_ext.DTDConfig(threshold=0.9)
    model, _, cache = generate_into_packed_cache(family, SALIENT, dtd=dtd)
    stats = vidllm_ext.last_stats(model)
    assert stats.video_tokens_after < stats.video_tokens_before
    tokens_per_step = SyntheticVideo().tokens_per_step
    for row, ratios in zip(stats.samples, stats.step_drop_ratios):
        kept = sum(round((1 - r) * tokens_per_step) for r in ratios.tolist())
        assert int(cache.salient.mask[row].sum()) == math.ceil(0.2 * kept)


def test_streaming_session_uses_the_patched_kv_config():
    model = build_model("qwen2_5_vl")
    vidllm_ext.patch(model, kv=SMALL)
    session = vidllm_ext.StreamingSession(model, dtd=None, timestamp_ids=lambda step: TIMESTAMP)
    assert isinstance(session.cache, PackedKVCache) and session.cache.config == SMALL
    feed(session, SyntheticVideo(steps=6), [2, 2, 2])
    answer = session.ask([50, 51, 52], max_new_tokens=4)
    assert answer.numel() == 4
    assert session.cache.layers[0].quantized_length > 0
    explicit = vidllm_ext.StreamingSession(model, dtd=None, kv=SALIENT)
    assert explicit.cache.config == SALIENT


def test_patch_rejects_a_wrong_kv_argument():
    model = build_model("qwen2_vl")
    with pytest.raises(TypeError, match="KVQuantConfig"):
        vidllm_ext.patch(model, kv={"key_bits": 2})
