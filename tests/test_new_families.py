"""Beam search with DTD and merging on the newer families (issue 18, section 1); the other
model-level guarantees run on them through models.FAMILIES."""

import pytest
import torch
from support.models import NEW_FAMILIES, SyntheticVideo, build_model, dtd_for, make_inputs

import vidllm_ext
from vidllm_ext.integration import registry

pytest.importorskip("transformers")
MERGE = vidllm_ext.MergeConfig(frames_per_segment=2, tokens_per_segment=5, metric_chunks=4)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_beam_search_with_dtd_and_merging(family):
    model = build_model(family)
    inputs = make_inputs(family, [SyntheticVideo(), SyntheticVideo(seed=1, moving=(1,))], [3, 5])
    vidllm_ext.patch(model, dtd=dtd_for(family), merge=MERGE)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)
    stats, merged = vidllm_ext.last_stats(model), vidllm_ext.last_stats(model, "merge")
    assert stats.samples == merged.samples == [0, 1, 2, 3]  # every beam row like its sample
    assert torch.equal(stats.step_drop_ratios[0], stats.step_drop_ratios[1])
    assert merged.tokens_per_video[0] == merged.tokens_per_video[1] <= 10


def test_the_registry_names_every_family_and_the_release_that_added_it():
    assert set(NEW_FAMILIES) <= set(registry.supported_model_types())
    for family in NEW_FAMILIES:
        assert registry.family_available(family)
        assert registry.require_family(family).adapter is registry.ADAPTERS[family]


def test_a_family_missing_from_the_installed_transformers_is_named(monkeypatch):
    monkeypatch.setattr(registry, "family_available", lambda model_type: False)
    with pytest.raises(ValueError, match=r"'qwen3_5' needs transformers >= 5\.2 \(the release"):
        registry.require_family("qwen3_5")
    with pytest.raises(ValueError, match=r"unsupported model type 'gemma3'.*qwen3_5_moe"):
        registry.require_family("gemma3")
