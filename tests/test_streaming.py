"""StreamingSession: chunked prefill with token drop equals one forward over the whole video."""

import numpy as np
import pytest
import torch
from support.models import (
    SyntheticVideo,
    build_model,
    dtd_for,
    make_inputs,
    text_only_model,
)
from support.streaming import TIMESTAMP, answer_in_one_call, feed

import vidllm_ext

pytest.importorskip("transformers")
STREAMING_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision"]
QUESTION = [50, 51, 52]


@pytest.mark.parametrize("family", STREAMING_FAMILIES)
@pytest.mark.parametrize("chunk_steps", [[6], [1, 5], [2, 1, 3], [1, 1, 1, 1, 1, 1]])
def test_chunked_session_matches_one_forward_with_the_same_drops(family, chunk_steps):
    model = build_model(family)
    video = SyntheticVideo(steps=6, moving=(0, 5, 6, 11))
    patched = vidllm_ext.patch(model, dtd=dtd_for(family))
    expected = answer_in_one_call(patched, family, video, max_new_tokens=8)
    expected_drops = vidllm_ext.last_stats(model).step_drop_ratios[0].tolist()

    session = vidllm_ext.StreamingSession(
        model, dtd=dtd_for(family), timestamp_ids=lambda step: TIMESTAMP
    )
    feed(session, video, chunk_steps)
    answer = session.ask(QUESTION, max_new_tokens=8)
    assert session.step_drop_ratios == expected_drops
    assert 0 < sum(expected_drops) < 6
    assert torch.equal(answer, expected[: answer.numel()])
    held = session.cache.get_seq_length()
    kept_video = sum(round((1 - r) * 16) for r in expected_drops)
    text_around_video = {"qwen3_vl": 6 * (len(TIMESTAMP) + 2), "llava_onevision": 1}.get(family, 2)
    assert held == kept_video + text_around_video + len(QUESTION) + answer.numel()


@pytest.mark.parametrize("family", STREAMING_FAMILIES)
def test_session_without_dtd_matches_plain_generate(family):
    model = build_model(family)
    video = SyntheticVideo(steps=4)
    expected = answer_in_one_call(model, family, video)
    session = vidllm_ext.StreamingSession(model, dtd=None, timestamp_ids=lambda step: TIMESTAMP)
    feed(session, video, [3, 1])
    answer = session.ask(QUESTION, max_new_tokens=6)
    assert torch.equal(answer, expected[: answer.numel()])


def test_more_frames_after_a_question_and_scene_changes():
    model = build_model("qwen2_5_vl")
    session = vidllm_ext.StreamingSession(model, dtd=dtd_for("qwen2_5_vl"))
    static = SyntheticVideo(steps=3, moving=(), seed=3)
    feed(session, static, [3])
    first = session.ask(QUESTION, max_new_tokens=3)
    cut = SyntheticVideo(steps=3, moving=(), seed=4)  # a different scene: nothing is redundant
    feed(session, cut, [1, 2])
    second = session.ask(QUESTION, max_new_tokens=3)
    assert first.numel() and second.numel()
    assert session.step_drop_ratios[:3] == [0.0, 1.0, 1.0]
    assert session.step_drop_ratios[3] == 0.0 and session.step_drop_ratios[4:] == [1.0, 1.0]
    assert session.scene_changes(0.2) == [3]
    with pytest.raises(ValueError, match="top_fraction"):
        session.scene_changes(0.0)


def test_uint8_frames_in_odd_counts():
    model = build_model("qwen2_vl")
    session = vidllm_ext.StreamingSession(model, dtd=dtd_for("qwen2_vl"))
    frames = np.random.default_rng(0).integers(0, 256, (5, 100, 120, 3), dtype=np.uint8)
    session.append_frames(frames[:3])  # two frames make one step; the third waits
    assert session.video_grids == [[1, 8, 8]]
    session.append_frames(frames[3:])
    assert session.video_grids == [[2, 8, 8]] and session._pending.shape[0] == 1
    assert len(session.step_drop_ratios) == 2
    with pytest.raises(ValueError, match=r"frames: expected uint8 \[f, H, W, 3\]"):
        session.append_frames(np.zeros((2, 8, 8), dtype=np.uint8))


def test_streaming_needs_a_supported_video_llm():
    model = text_only_model()
    with pytest.raises(ValueError, match="unsupported model type 'llama'"):
        vidllm_ext.StreamingSession(model)


def test_llava_uint8_frames():
    model = build_model("llava_onevision")
    session = vidllm_ext.StreamingSession(model, dtd=dtd_for("llava_onevision"))
    frames = np.random.default_rng(0).integers(0, 256, (3, 90, 70, 3), dtype=np.uint8)
    session.append_frames(frames)
    session.append_frames(frames[:1])
    assert session.video_grids == [[4, 4, 4]] and len(session.step_drop_ratios) == 4
    assert session.ask(QUESTION, max_new_tokens=2).numel() >= 1


MERGE = vidllm_ext.MergeConfig(frames_per_segment=2, tokens_per_segment=5, metric_chunks=4)


@pytest.mark.parametrize("family", STREAMING_FAMILIES)
@pytest.mark.parametrize("chunk_steps", [[1, 5], [3, 3], [1, 1, 1, 1, 1]])
@pytest.mark.parametrize("dtd", [False, True], ids=["merge", "dtd+merge"])
def test_merged_stream_matches_one_forward(family, chunk_steps, dtd):
    """Segments of two steps are prefilled as they complete; the question closes the open one
    early, like the shorter last segment of one forward."""
    model = build_model(family)
    steps = sum(chunk_steps)
    video = SyntheticVideo(steps=steps, moving=(0, 5, 6, 11))
    inputs = make_inputs(family, [video], [0])
    dtd_config = dtd_for(family) if dtd else None
    with torch.no_grad():
        expected = vidllm_ext.patch(model, dtd=dtd_config, merge=MERGE).generate(
            **inputs, max_new_tokens=6, do_sample=False
        )[0, inputs["input_ids"].shape[1] :]

    session = vidllm_ext.StreamingSession(
        model, dtd=dtd_config, merge=MERGE, timestamp_ids=lambda step: TIMESTAMP
    )
    feed(session, video, chunk_steps)
    complete = steps // 2 * 2
    assert len(session._waiting_steps) == steps - complete
    assert session.steps_seen == complete
    if not dtd:  # every complete segment holds 5 merged tokens
        text = {"qwen3_vl": complete * (len(TIMESTAMP) + 2), "llava_onevision": 0}.get(family, 1)
        assert session.cache.get_seq_length() == complete // 2 * 5 + text
    answer = session.ask(QUESTION, max_new_tokens=6)
    assert session.steps_seen == steps
    assert torch.equal(answer, expected[: answer.numel()])
