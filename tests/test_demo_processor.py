"""The demo processor: the inputs Qwen2.5-VL takes, laid out as the Qwen processor does."""

import numpy as np
import pytest
import torch

from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.model import build_model, build_processor
from vidllm_ext.demo.processor import DemoProcessor, DemoVideoProcessor, messages_for
from vidllm_ext.integration.registry import adapter_for

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def test_words_round_trip_and_unknown_words(processor):
    question, answer = demo_task.sample(3).questions[1]
    ids = processor.tokenizer(f"{question} {answer}", add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids
    assert processor.decode(ids) == f"{question} {answer}"
    assert processor.tokenizer("zebra", add_special_tokens=False)["input_ids"] == [
        processor.tokenizer.unk_token_id
    ]


def test_video_tokens_expand_to_the_grid(processor):
    clip = demo_task.sample(1)
    text = processor.apply_chat_template(messages_for(clip.questions[0][0]))
    inputs = processor(text=[text], videos=[clip.frames])
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    grid = inputs["video_grid_thw"].tolist()
    assert grid == [[demo_task.FRAMES // 2, 6, 6]]
    assert int((inputs["input_ids"] == video_id).sum()) == grid[0][0] * 9
    assert inputs["pixel_values_videos"].shape == (8 * 36, 3 * 2 * 14 * 14)
    assert inputs["attention_mask"].all()
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == video_id).int() * 2)


def test_pixels_match_the_adapters_qwen_layout(processor):
    model = build_model()
    frames = torch.from_numpy(demo_task.sample(2).frames)
    rows, grid = adapter_for(model).preprocess_frames(frames)
    ours = processor.video_processor([frames.numpy()])
    assert ours["video_grid_thw"].tolist() == [grid]
    torch.testing.assert_close(ours["pixel_values_videos"], rows)


def test_model_forward_takes_the_inputs(processor):
    model = build_model()
    clip = demo_task.sample(4)
    inputs = processor(
        text=[processor.apply_chat_template(messages_for("hi"))], videos=[clip.frames]
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_odd_frames_repeat_the_last_and_other_sizes_are_resized():
    video = DemoVideoProcessor()
    frames = np.random.default_rng(0).integers(0, 256, (5, 120, 160, 3), dtype=np.uint8)
    rows, grid = video.patches(frames)
    assert grid == [3, 6, 6] and rows.shape == (3 * 36, 1176)
    with pytest.raises(ValueError, match="uint8"):
        video.patches(frames.astype(np.float32))


def test_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = DemoProcessor.from_pretrained(tmp_path)
    text = "what colour is the moving object ? red"
    assert loaded.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
