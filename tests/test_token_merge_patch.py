"""vidllm_ext.patch(model, merge=MergeConfig(...)): hierarchical token merging inside tiny Qwen2-VL,
Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision models, alone and after DTD."""

import pytest
import torch
from support.models import FAMILIES, SyntheticVideo, build_model, dtd_for, make_inputs
from support.patch_reference import merged_reference_inputs, reference_greedy

import vidllm_ext

pytest.importorskip("transformers")
# Two steps per segment, five tokens kept of each segment's 32 (16 tokens per step).
MERGE = vidllm_ext.MergeConfig(frames_per_segment=2, tokens_per_segment=5, metric_chunks=4)


def decoder_inputs(model, inputs):
    """What the patched language model's decoder layers receive (after every pre-hook)."""
    captured = {}
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    handle.remove()
    return captured, logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtd", [False, True], ids=["merge", "dtd+merge"])
def test_merge_equals_language_model_on_reference_merged_inputs(family, dtd):
    model = build_model(family)
    video = SyntheticVideo(steps=5, moving=(0, 5, 6, 9))  # a shorter last segment
    inputs = make_inputs(family, [video], [5])
    expected_inputs, _, kept_columns = merged_reference_inputs(family, model, inputs, MERGE, dtd)
    with torch.no_grad():
        hidden = model.model.language_model(**expected_inputs).last_hidden_state
        expected = model.lm_head(hidden)
    vidllm_ext.patch(model, merge=MERGE, dtd=dtd_for(family) if dtd else None)
    actual_inputs, actual = decoder_inputs(model, inputs)
    positions = actual_inputs["position_ids"]
    if family == "llava_onevision":
        assert torch.equal(positions, kept_columns[None])
    else:  # M-RoPE (t, h, w) rows of the representatives; the text row renumbered
        assert torch.equal(positions[-3:], expected_inputs["position_ids"])
    torch.testing.assert_close(
        actual_inputs["inputs_embeds"], expected_inputs["inputs_embeds"], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    stats = vidllm_ext.last_stats(model, "merge")
    kept_video = kept_columns.numel() - (inputs["attention_mask"][0].sum() - 5 * 16).item()
    assert stats.video_tokens_after == kept_video == stats.tokens_per_video[0]
    if not dtd:  # 2 + 2 + 1 steps: 32 -> 5, 32 -> 5, 16 -> 5
        assert (stats.video_tokens_before, stats.video_tokens_after, stats.segments) == (80, 15, 3)
    else:
        assert stats.video_tokens_before == vidllm_ext.last_stats(model).video_tokens_after < 80
        assert stats.video_tokens_after <= 15


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_matches_reference_decoding(family):
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo(steps=4)], [5])
    reduced, positions, _ = merged_reference_inputs(family, model, inputs, MERGE, dtd=True)
    expected = reference_greedy(model, reduced, positions, 8)
    with torch.no_grad():
        output = vidllm_ext.patch(model, dtd=dtd_for(family), merge=MERGE).generate(
            **inputs, max_new_tokens=8, do_sample=False
        )
    assert torch.equal(output[:, inputs["input_ids"].shape[1] :], expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("dtd", [False, True], ids=["merge", "dtd+merge"])
def test_padded_batch_equals_each_sample_alone(family, attn_implementation, dtd):
    model = build_model(family, attn_implementation)
    vidllm_ext.patch(model, merge=MERGE, dtd=dtd_for(family) if dtd else None)
    videos = [
        SyntheticVideo(steps=4, moving=(0, 5, 6), seed=1),
        SyntheticVideo(steps=4, moving=(1, 2, 3, 9, 10), seed=2),
    ]
    prompts = [3, 9]
    with torch.no_grad():
        batch = model.generate(
            **make_inputs(family, videos, prompts), max_new_tokens=6, do_sample=False
        )
        batch_counts = vidllm_ext.last_stats(model, "merge").tokens_per_video
        singles, single_counts = [], []
        for video, prompt in zip(videos, prompts):
            inputs = make_inputs(family, [video], [prompt])
            singles.append(model.generate(**inputs, max_new_tokens=6, do_sample=False))
            single_counts += vidllm_ext.last_stats(model, "merge").tokens_per_video
    assert batch_counts == single_counts
    if not dtd:
        assert batch_counts == [10, 10]
    for row, single in zip(batch, singles):
        assert torch.equal(row[-6:], single[0, -6:])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_a_target_above_every_segment_merges_nothing(family):
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo(steps=4)], [5])
    with torch.no_grad():
        expected = model(**inputs).logits
        config = vidllm_ext.MergeConfig(frames_per_segment=2, tokens_per_segment=32)
        actual = vidllm_ext.patch(model, merge=config)(**inputs).logits
    stats = vidllm_ext.last_stats(model, "merge")
    assert (stats.video_tokens_before, stats.video_tokens_after, stats.merge_ratio) == (64, 64, 0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_unpatch_restores_and_text_only_calls_pass_through():
    model = build_model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", [SyntheticVideo()], [5])
    text = dict(input_ids=torch.tensor([[10, 11, 12, 13]]))
    with torch.no_grad():
        expected, expected_text = model(**inputs).logits, model(**text).logits
        vidllm_ext.patch(model, merge=MERGE)
        assert model(**inputs).logits.shape[1] == expected.shape[1] - (64 - 10)
        assert torch.equal(model(**text).logits, expected_text)
        vidllm_ext.unpatch(model)
        assert torch.equal(model(**inputs).logits, expected)
    assert "get_video_features" not in vars(model.model)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"])
def test_beam_search_merges_every_beam_row_like_its_sample(family):
    model = build_model(family)
    videos = [SyntheticVideo(), SyntheticVideo(seed=1, moving=(1,))]
    inputs = make_inputs(family, videos, [3, 5])
    vidllm_ext.patch(model, merge=MERGE, dtd=dtd_for(family))
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)
    stats = vidllm_ext.last_stats(model, "merge")
    assert stats.samples == [0, 1, 2, 3]
    assert stats.tokens_per_video[0] == stats.tokens_per_video[1] <= 10


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_dtd_merge_and_routing_together(family):
    """Routing sees the merged tokens: each takes its representative's temporal step."""
    model = build_model(family)
    mod = vidllm_ext.MoDConfig(keep_ratio=0.5)
    vidllm_ext.patch(model, dtd=dtd_for(family), merge=MERGE, mod=mod)
    videos = [SyntheticVideo(seed=1), SyntheticVideo(seed=2, moving=(1, 2, 3, 9, 10))]
    with torch.no_grad():
        batch = model.generate(
            **make_inputs(family, videos, [3, 9]), max_new_tokens=4, do_sample=False
        )
        merged = vidllm_ext.last_stats(model, "merge").video_tokens_after
        routing = vidllm_ext.last_stats(model, "mod")
        singles = [
            model.generate(**make_inputs(family, [v], [p]), max_new_tokens=4, do_sample=False)
            for v, p in zip(videos, [3, 9])
        ]
    assert routing.video_tokens_before == merged
    assert merged / 2 <= routing.video_tokens_after[0] < merged
    for row, single in zip(batch, singles):
        assert torch.equal(row[-4:], single[0, -4:])
