"""Packed attention inside models: patch(kv=) makes generate, beam search, padded batches and the
streaming session read the packed cache through the registered attention function, without ever
calling a dequantizer; the logits match the dequantizing path."""

import pytest
import torch
from support.models import FAMILIES, SyntheticVideo, build_model, make_inputs
from support.packed_models import SMALL, two_videos
from support.streaming import TIMESTAMP, feed

import vidllm_ext
from vidllm_ext import PackedKVCache, cache_kwargs, ops
from vidllm_ext.integration import kv_attention as attention
from vidllm_ext.integration.kv_quant_cache import PackedKVLayer
from vidllm_ext.ops import kv_quant_pack as kv_pack
from vidllm_ext.reference import kv_quant_pack as reference_kv_pack


class Calls:
    """Counts packed attention calls and fails on any dequantizer call."""

    def __init__(self, monkeypatch):
        self.packed = 0

        def forbidden(name):
            def call(*args, **kwargs):
                raise AssertionError(f"{name} called while decoding with packed attention")

            return call

        for module, names in (
            (ops, ("dequantize_keys", "dequantize_values")),
            (kv_pack, ("dequantize_channel_groups", "dequantize_token_groups")),
            (reference_kv_pack, ("dequantize_channel_groups", "dequantize_token_groups")),
        ):
            for name in names:
                monkeypatch.setattr(module, name, forbidden(name))
        monkeypatch.setattr(PackedKVLayer, "dequantized_old", forbidden("dequantized_old"))
        original = attention.packed_attention

        def counted(*args, **kwargs):
            self.packed += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(attention, "packed_attention", counted)


def generate(model, inputs, cache, **kwargs):
    return model.generate(
        **inputs,
        max_new_tokens=6,
        do_sample=False,
        **cache_kwargs(model, cache),
        output_scores=True,
        return_dict_in_generate=True,
        **kwargs,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_reads_the_packed_cache_and_matches_the_dequantizing_path(family, monkeypatch):
    model, inputs = build_model(family), two_videos(family)  # two prompts: a padded batch
    expected = generate(model, inputs, PackedKVCache(SMALL))  # unpatched: dequantize + sdpa
    vidllm_ext.patch(model, kv=SMALL)
    assert model.config.get_text_config()._attn_implementation == "vidllm_packed|sdpa"
    calls = Calls(monkeypatch)
    cache = PackedKVCache(SMALL)
    out = generate(model, inputs, cache)
    assert cache.packed_attention and calls.packed > 0
    assert torch.equal(out.sequences, expected.sequences)
    for mine, theirs in zip(out.scores, expected.scores):
        assert torch.allclose(mine, theirs, atol=2e-4, rtol=1e-4)
    beams = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=3)
    assert beams.shape[0] == 2
    monkeypatch.undo()
    vidllm_ext.unpatch(model)
    assert model.config.get_text_config()._attn_implementation == "sdpa"


def test_eager_models_keep_their_eager_mask_and_fallback():
    """One prompt: with left padding, eager gives fully masked (padding) queries the mean of all
    values where packed attention (like sdpa) gives zeros; the padding tokens' cached values then
    differ and so do the statistics of the quantization groups they share with real tokens."""
    model = build_model("qwen2_vl", attn_implementation="eager")
    inputs = make_inputs("qwen2_vl", [SyntheticVideo()], [4])
    expected = generate(model, inputs, PackedKVCache(SMALL))
    vidllm_ext.patch(model, kv=SMALL)
    assert model.config.get_text_config()._attn_implementation == "vidllm_packed|eager"
    out = generate(model, inputs, None)
    assert torch.equal(out.sequences, expected.sequences)
    for mine, theirs in zip(out.scores, expected.scores):
        assert torch.allclose(mine, theirs, atol=2e-4, rtol=1e-4)


def test_streaming_session_decodes_with_packed_attention(monkeypatch):
    model = build_model("qwen2_5_vl")
    vidllm_ext.patch(model, kv=SMALL)
    session = vidllm_ext.StreamingSession(model, dtd=None, timestamp_ids=lambda step: TIMESTAMP)
    assert session.cache.packed_attention
    feed(session, SyntheticVideo(steps=6), [2, 2, 2])  # chunks: Lq > 1 over packed tokens
    calls = Calls(monkeypatch)
    answer = session.ask([50, 51, 52], max_new_tokens=4)
    assert answer.numel() == 4 and calls.packed > 0


def test_placeholders_read_by_another_attention_give_nan_not_a_wrong_answer():
    model, inputs = build_model("qwen2_vl"), two_videos("qwen2_vl")  # not patched
    cache = PackedKVCache(SMALL, packed_attention=True)
    out = generate(model, inputs, cache)
    assert torch.isnan(out.scores[-1]).all()


def test_attention_function_rejects_training_dropout():
    model = build_model("qwen2_vl")
    cache = PackedKVCache(SMALL, packed_attention=True)
    keys, values = cache.update(torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16), 0)
    assert getattr(keys, attention.LAYER_ATTRIBUTE) is cache.layers[0]
    assert keys.isnan().all() and keys.shape == (1, 2, 40, 16)
    module = model.model.language_model.layers[0].self_attn
    with pytest.raises(ValueError, match="inference-only"):
        attention.packed_attention_forward(
            module, torch.randn(1, 4, 1, 16), keys, values, None, dropout=0.1
        )
