"""vidllm_ext.patch on tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision models."""

import pytest
import torch
from support.models import (
    FAMILIES,
    FEATURE_THRESHOLD,
    SyntheticVideo,
    build_model,
    dtd_for,
    make_inputs,
)
from support.patch_reference import dtd_reduced_inputs, language_model_inputs, reference_greedy

import vidllm_ext

pytest.importorskip("transformers")


@pytest.mark.parametrize("family", FAMILIES)
def test_everything_off_is_bitwise_identical_and_unpatch_restores(family):
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo()], [5])
    with torch.no_grad():
        expected = model(**inputs).logits  # transformers adds its own hooks on the first call
        hooks = [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in model.modules()]
        assert torch.equal(vidllm_ext.patch(model)(**inputs).logits, expected)
        vidllm_ext.patch(model, dtd=dtd_for(family))
        assert model(**inputs).logits.shape[1] < expected.shape[1]
        vidllm_ext.unpatch(model)
        assert torch.equal(model(**inputs).logits, expected)
    assert hooks == [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in model.modules()]
    assert "get_video_features" not in vars(model.model)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["feature", "pixel"])
def test_dtd_equals_language_model_on_reduced_embeddings(family, method):
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo()], [5])
    threshold = FEATURE_THRESHOLD[family] if method == "feature" else 1e-6
    config = vidllm_ext.DTDConfig(threshold=threshold, method=method)
    expected_inputs, _ = dtd_reduced_inputs(family, model, inputs)
    with torch.no_grad():
        expected = model.lm_head(model.model.language_model(**expected_inputs).last_hidden_state)
        actual = vidllm_ext.patch(model, dtd=config)(**inputs).logits
    # Both methods drop exactly the static tokens of this video: 13 of 16 in steps 1..3.
    stats = vidllm_ext.last_stats(model)
    assert (stats.video_tokens_before, stats.video_tokens_after) == (64, 25)
    assert torch.allclose(stats.step_drop_ratios[0], torch.tensor([0.0, 13 / 16, 13 / 16, 13 / 16]))
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_matches_reference_decoding(family):
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo()], [5])
    reduced, positions = dtd_reduced_inputs(family, model, inputs)
    expected = reference_greedy(model, reduced, positions, 8)
    with torch.no_grad():
        output = vidllm_ext.patch(model, dtd=dtd_for(family)).generate(
            **inputs, max_new_tokens=8, do_sample=False
        )
    assert torch.equal(output[:, inputs["input_ids"].shape[1] :], expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("prompts", [[3, 9], [5, 5]], ids=["padded", "unpadded"])
def test_batch_with_different_drop_counts(family, attn_implementation, prompts):
    """Unpadded too: generate then drops the all-ones mask, while compaction left-pads."""
    model = vidllm_ext.patch(build_model(family, attn_implementation), dtd=dtd_for(family))
    videos = [
        SyntheticVideo(moving=(0, 5, 6), seed=1),
        SyntheticVideo(moving=(1, 2, 3, 9, 10), seed=2),
    ]
    with torch.no_grad():
        batch = model.generate(
            **make_inputs(family, videos, prompts), max_new_tokens=6, do_sample=False
        )
        batch_drops = [r.tolist() for r in vidllm_ext.last_stats(model).step_drop_ratios]
        singles, single_drops = [], []
        for video, prompt in zip(videos, prompts):
            inputs = make_inputs(family, [video], [prompt])
            singles.append(model.generate(**inputs, max_new_tokens=6, do_sample=False))
            single_drops += [r.tolist() for r in vidllm_ext.last_stats(model).step_drop_ratios]
    assert batch_drops == single_drops and batch_drops[0] != batch_drops[1]
    for row, single in zip(batch, singles):
        assert torch.equal(row[-6:], single[0, -6:])


def test_patching_twice_replaces_and_leaves_other_instances_alone():
    model, other = build_model("qwen2_5_vl"), build_model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", [SyntheticVideo()], [5])
    with torch.no_grad():
        expected = other(**inputs).logits
        vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold=0.9))
        vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold=0.5, mode="relative"))
        assert len(model.model.language_model._forward_pre_hooks) == 1  # replaced, not stacked
        assert len(model.model._forward_pre_hooks) == 1
        model(**inputs)
        assert vidllm_ext.last_stats(model).video_tokens_after == 16 + 3 * 8
        assert torch.equal(other(**inputs).logits, expected)
    assert not hasattr(other, "_vidllm_patch")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_image_tokens_beside_a_video_are_untouched(family):
    from support.models import IMAGE, START

    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo()], [5])
    image = SyntheticVideo(steps=1, seed=9)  # one temporal patch of an 8 x 8 patch image
    image_ids = torch.tensor([[START, *[IMAGE] * image.tokens_per_step, 303]])
    inputs["input_ids"] = torch.cat([image_ids, inputs["input_ids"]], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == 301).int() * 2 + (
        inputs["input_ids"] == IMAGE
    ).int()
    inputs["pixel_values"] = image.pixel_rows()
    inputs["image_grid_thw"] = torch.tensor([image.grid_thw()])
    before = language_model_inputs(model, inputs)["inputs_embeds"]
    vidllm_ext.patch(model, dtd=dtd_for(family))
    after = language_model_inputs(model, inputs)["inputs_embeds"]
    stats = vidllm_ext.last_stats(model)
    image_columns = (inputs["input_ids"][0] == IMAGE).nonzero().flatten()
    assert stats.video_tokens_before == 64 and stats.video_tokens_after < 64
    assert after.shape[1] == before.shape[1] - (64 - stats.video_tokens_after)
    # The image block leads the prompt, so it keeps its columns, every token of it.
    assert torch.equal(after[0, image_columns], before[0, image_columns])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_beam_search_with_dtd(family):
    # Beam search repeats each sample's rows but passes each video's grid once.
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo(), SyntheticVideo(seed=1, moving=(1,))], [3, 5])
    vidllm_ext.patch(model, dtd=dtd_for(family))
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)
    stats = vidllm_ext.last_stats(model)
    assert stats.samples == [0, 1, 2, 3]  # every beam row dropped like its sample
    assert torch.equal(stats.step_drop_ratios[0], stats.step_drop_ratios[1])
