"""Token-drop augmentation: hiding the tokens DTD drops computes what the DTD-patched model does."""

import random

import pytest
import torch

import vidllm_ext
from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.augment import STATIC_BELOW, hidden_tokens, hide_dropped_tokens
from vidllm_ext.demo.model import build_model, build_processor
from vidllm_ext.demo.processor import messages_for

pytest.importorskip("transformers")


class StaticMode(random.Random):
    """Always picks the augmentation's pixel-DTD mode."""

    def random(self):
        return 0.0


class FeatureMode(random.Random):
    """Picks the feature-DTD mode and threshold 0.8 + 0.19 * 0.99."""

    def random(self):
        return 0.99


def test_hiding_static_tokens_matches_the_pixel_dtd_patch():
    model, processor = build_model(seed=3), build_processor()
    for seed in demo_task.seeds("validation", 2):
        clip = demo_task.sample(seed)
        text = processor.apply_chat_template(messages_for(clip.questions[0][0]))
        inputs = processor(text=[text], videos=[clip.frames])
        hidden = hide_dropped_tokens(model, inputs, [0], StaticMode())
        assert int((inputs["attention_mask"] - hidden["attention_mask"]).sum()) > 30
        with torch.no_grad():
            masked = model(**hidden).logits[0, -1]
            vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(STATIC_BELOW, method="pixel"))
            dropped = model(**inputs).logits[0, -1]
            vidllm_ext.patch(model)
            full = model(**inputs).logits[0, -1]
        torch.testing.assert_close(masked, dropped, atol=1e-4, rtol=1e-4)
        assert (masked - full).abs().max() > 1e-3  # hiding changed something


def test_feature_mode_matches_the_feature_dtd_patch():
    model, processor = build_model(seed=4), build_processor()
    clip = demo_task.sample(demo_task.seeds("validation", 1)[0])
    inputs = processor(
        text=[processor.apply_chat_template(messages_for(clip.questions[1][0]))],
        videos=[clip.frames],
    )
    hidden = hide_dropped_tokens(model, inputs, [0], FeatureMode(), feature_share=1.0)
    threshold = FeatureMode().uniform(0.8, 0.99)
    with torch.no_grad():
        masked = model(**hidden).logits[0, -1]
        vidllm_ext.patch(model, dtd=vidllm_ext.DTDConfig(threshold))
        dropped = model(**inputs).logits[0, -1]
        stats = vidllm_ext.last_stats(model)
        vidllm_ext.patch(model)
    hidden_count = int((inputs["attention_mask"] - hidden["attention_mask"]).sum())
    assert hidden_count == stats.video_tokens_before - stats.video_tokens_after > 0
    torch.testing.assert_close(masked, dropped, atol=1e-4, rtol=1e-4)


def test_relative_mode_hides_most_of_every_later_step_and_never_the_first():
    changes = torch.rand(7, 9)
    rng = random.Random(0)
    rng.random = lambda: 0.9  # the relative mode: hides int(9 * uniform(0.5, 0.9)) per step
    hidden = hidden_tokens(changes, rng)
    assert hidden.shape == (8, 9) and not hidden[0].any()
    counts = hidden[1:].sum(1)
    assert (counts == counts[0]).all() and 4 <= int(counts[0]) <= 8
    # the least-changed tokens are the hidden ones
    for step in range(7):
        kept = changes[step][~hidden[step + 1]]
        assert changes[step][hidden[step + 1]].max() <= kept.min()
