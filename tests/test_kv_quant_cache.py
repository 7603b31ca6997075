"""PackedKVCache: the window, whole-group flushes, exact storage, generate, beams, padding."""

import pytest
import torch
import transformers
from support.kv import KV_CONFIGS, assert_packed_equal, outlier_kv

from vidllm_ext import KVQuantConfig, PackedKVCache, cache_kwargs, ops
from vidllm_ext.contracts.kv_quant import PackedKeys, PackedValues

# The shared configurations, and 2-bit keys with ternary values, the default (fft) key transform.
CONFIGS = {
    **KV_CONFIGS,
    "2/1.58": KVQuantConfig(2, 1.58, group_size=8, residual_length=16),
    "1.5/2-fft": KVQuantConfig(1.5, 2, group_size=8, residual_length=16),
}


def feed(cache, k, v, chunks, layer=0):
    start = 0
    for size in chunks:
        cache.update(k[:, :, start : start + size], v[:, :, start : start + size], layer)
        start += size
    assert start == k.shape[2]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(
    "chunks", [[1] * 61, [13, 1, 30, 17], [61]], ids=["token", "mixed", "once"]
)
def test_cache_holds_exactly_what_quantizing_the_groups_at_once_gives(name, chunks):
    cfg = CONFIGS[name]
    k, v = outlier_kv(tokens=61, dim=16), outlier_kv(tokens=61, dim=16, seed=1)
    cache = PackedKVCache(cfg)
    feed(cache, k, v, chunks)
    layer = cache.layers[0]
    quantized = layer.quantized_length
    assert quantized % cfg.group_size == 0
    assert cfg.residual_length <= 61 - quantized < cfg.residual_length + cfg.group_size
    assert torch.equal(layer.keys, k[:, :, quantized:]) and torch.equal(
        layer.values, v[:, :, quantized:]
    )
    (keys,), (values,) = layer.key_blocks, layer.value_blocks
    if cfg.quantizes_keys:
        at_once = ops.quantize_keys(k[:, :, :quantized], cfg, channel_split=layer.channel_split)
        assert isinstance(keys, PackedKeys)
        assert_packed_equal(keys, at_once, stat_rtol=0)
    else:
        assert torch.equal(keys, k[:, :, :quantized])
    if cfg.quantizes_values:
        assert isinstance(values, PackedValues)
        assert_packed_equal(values, ops.quantize_values(v[:, :, :quantized], cfg), stat_rtol=0)
    else:
        assert torch.equal(values, v[:, :, :quantized])
    all_keys, all_values = layer.dequantized()
    assert all_keys.shape == k.shape and all_values.shape == v.shape
    assert torch.equal(all_keys[:, :, quantized:], k[:, :, quantized:])


def test_window_rule_after_every_update_and_short_caches_stay_exact():
    cfg = KVQuantConfig(group_size=4, residual_length=8)
    k = outlier_kv(tokens=40, dim=8)
    cache = PackedKVCache(cfg)
    for t in range(40):
        returned_k, _ = cache.update(k[:, :, t : t + 1], k[:, :, t : t + 1], 0)
        window = cache.layers[0].keys.shape[2]
        seen = t + 1
        if seen < 8:
            assert window == seen and torch.equal(returned_k, k[:, :, :seen])
        else:
            assert 8 <= window < 12
        assert cache.get_seq_length() == seen == returned_k.shape[2]


def test_a_quantized_token_is_never_quantized_again(monkeypatch):
    counted = {"keys": 0, "values": 0}
    quantize_keys, quantize_values = ops.quantize_keys, ops.quantize_values

    def count_keys(k, *args, **kwargs):
        counted["keys"] += k.shape[2]
        return quantize_keys(k, *args, **kwargs)

    def count_values(v, *args, **kwargs):
        counted["values"] += v.shape[2]
        return quantize_values(v, *args, **kwargs)

    monkeypatch.setattr(ops, "quantize_keys", count_keys)
    monkeypatch.setattr(ops, "quantize_values", count_values)
    cfg = KVQuantConfig(group_size=4, residual_length=8)
    k = outlier_kv(tokens=203, dim=8)
    cache = PackedKVCache(cfg)
    feed(cache, k, k, [50] + [1] * 100 + [53])
    quantized = cache.layers[0].quantized_length
    assert counted == {"keys": quantized, "values": quantized}
    assert quantized == 192


def test_nbytes_counts_every_stored_tensor():
    cfg = KVQuantConfig(1.5, 1.58, group_size=8, residual_length=16)
    k = outlier_kv(tokens=77, dim=16)
    cache = PackedKVCache(cfg)
    for layer in range(2):
        feed(cache, k, k, [40, 37], layer)
    total = 0
    for layer in cache.layers:
        tensors = [layer.keys, layer.values]
        for block in [*layer.key_blocks, *layer.value_blocks]:
            tensors += [t for t in vars(block).values() if isinstance(t, torch.Tensor)]
        total += sum(t.numel() * t.element_size() for t in tensors)
    assert cache.nbytes() == total
    window = 2 * 2 * (2 * 3 * cache.layers[0].keys.shape[2] * 16 * 4)
    elements = 2 * 2 * 3 * 2 * cache.layers[0].quantized_length * 16
    assert cache.bits_per_element() == pytest.approx(8 * (total - window) / elements)


@pytest.mark.parametrize(
    "config, limit",
    [
        (KVQuantConfig(2, 2, group_size=32, value_axis="token"), 3.0),
        (KVQuantConfig(2, 2, group_size=32), 3.0),
        (KVQuantConfig(1.5, 1.58, group_size=32), 2.3),
        (KVQuantConfig(1.5, 1.58, group_size=128), 1.85),
        (KVQuantConfig(1.5, 1.58, group_size=64, scale_dtype="float8_e4m3fn"), 1.85),
        (KVQuantConfig(1.5, 1.58, group_size=128, scale_dtype="float8_e4m3fn"), 1.85),
    ],
)
def test_bits_per_element_targets_on_a_full_cache(config, limit):
    kv = torch.randn(1, 4, 2048 + config.residual_length, 128, dtype=torch.float16)
    cache = PackedKVCache(config)
    cache.update(kv, kv, 0)
    assert cache.layers[0].quantized_length == 2048
    assert cache.bits_per_element() <= limit


def test_float8_scales_at_group_32_cannot_reach_1_85_bits():
    # The pinned layout's floor: keys 1.5 + (64 * 2 + 64) * 8 / (32 * 128) = 1.875, values
    # ceil(128 / 5) * 8 / 128 + 128 * 8 / (32 * 128) = 1.875, plus the int16 channel split.
    kv = torch.randn(1, 4, 2048 + 128, 128, dtype=torch.float16)
    cache = PackedKVCache(KVQuantConfig(1.5, 1.58, scale_dtype="float8_e4m3fn"))
    cache.update(kv, kv, 0)
    split_bits = 4 * 64 * 2 * 8 / (2 * 4 * 2048 * 128)
    assert cache.bits_per_element() == pytest.approx(1.875 + split_bits)
    assert cache.bits_per_element() > 1.85


def test_batch_operations_follow_the_batch():
    cfg = KVQuantConfig(group_size=4, residual_length=4)
    k = outlier_kv(batch=3, tokens=21, dim=8)
    cache = PackedKVCache(cfg)
    feed(cache, k, k, [21])
    before, _ = cache.layers[0].dequantized()
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    after, _ = cache.layers[0].dequantized()
    assert torch.equal(after, before[[2, 0, 0]])
    cache.batch_select_indices(torch.tensor([0]))
    assert cache.layers[0].dequantized()[0].shape[0] == 1
    cache.batch_repeat_interleave(2)
    assert torch.equal(cache.layers[0].dequantized()[0], before[[2, 2]])


def test_crop_only_the_window_and_reset():
    cache = PackedKVCache(KVQuantConfig(group_size=4, residual_length=4))
    k = outlier_kv(tokens=10, dim=8)
    feed(cache, k, k, [10])
    cache.crop(-2)
    assert cache.get_seq_length() == 8
    with pytest.raises(NotImplementedError, match="window"):
        cache.crop(-6)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0
    with pytest.raises(ValueError, match="no token"):
        cache.bits_per_element()


def test_cache_rejects_bad_configuration_and_salient_marks():
    with pytest.raises(TypeError, match="KVQuantConfig"):
        PackedKVCache({"key_bits": 2})
    with pytest.raises(ValueError, match="salient_ratio"):
        PackedKVCache(KVQuantConfig()).mark_salient(torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool mask"):
        PackedKVCache(KVQuantConfig(salient_ratio=0.5)).mark_salient(torch.ones(4))


def test_salient_marks_are_equalized_per_flushed_block():
    cfg = KVQuantConfig(1.5, 1.58, group_size=4, residual_length=4, salient_ratio=0.5)
    k = outlier_kv(batch=2, tokens=12, dim=8)
    cache = PackedKVCache(cfg)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, [1, 2, 9]] = True
    mask[1, [5]] = True
    cache.mark_salient(mask)
    feed(cache, k, k, [12])
    (values,) = cache.layers[0].value_blocks
    # Sample 1 had one salient token among the 8 flushed: its earliest others fill up to two.
    assert values.salient_index.tolist() == [[1, 2], [0, 5]]


def tiny_causal_lm(kind):
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=97)
    common.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()


def padded_prompt():
    ids = torch.randint(3, 97, (2, 45), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    return dict(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("beams", [1, 3])
def test_full_precision_config_generates_exactly_like_dynamic_cache(kind, beams):
    model, prompt = tiny_causal_lm(kind), padded_prompt()
    args = dict(max_new_tokens=12, do_sample=False, num_beams=beams)
    expected = model.generate(**prompt, **args)
    cache = PackedKVCache(KVQuantConfig(key_bits=16, value_bits=16))
    assert torch.equal(model.generate(**prompt, **args, **cache_kwargs(model, cache)), expected)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("name", ["kivi-2/2-token", "1.5/1.58"])
def test_quantized_cache_generates_with_beams_and_padding(kind, beams, name):
    model, prompt = tiny_causal_lm(kind), padded_prompt()
    cache = PackedKVCache(CONFIGS[name])
    out = model.generate(
        **prompt, max_new_tokens=12, do_sample=False, num_beams=beams, **cache_kwargs(model, cache)
    )
    assert out.shape == (2, 45 + 12)
    assert cache.get_seq_length() == 45 + 11
    assert cache.layers[0].quantized_length == 40
    keys, values = cache.layers[1].dequantized()
    assert keys.shape == (2 * beams, 2, 56, 16) and bool(torch.isfinite(values).all())
