"""StreamingSession on the trained demo model: a question mid-stream gets the right answer, and
scene_changes() finds the cut."""

import pytest

import vidllm_ext
from vidllm_ext.demo import model as demo_model
from vidllm_ext.demo import task as demo_task

pytest.importorskip("transformers")

CHUNK = 4  # frames per append_frames call (2 temporal steps)


@pytest.fixture(scope="module")
def shipped():
    return demo_model.load()


def stream(model, processor, clip, ask_after: int):
    """Feeds the clip in chunks, asks the colour question after ``ask_after`` frames; returns
    (answer, scene changes found)."""
    session = vidllm_ext.StreamingSession(model, processor, dtd=vidllm_ext.DTDConfig(0.9))
    answer = None
    for start in range(0, demo_task.FRAMES, CHUNK):
        session.append_frames(clip.frames[start : start + CHUNK])
        if start + CHUNK == ask_after:
            answer = session.ask(demo_task.QUESTIONS["colour"], max_new_tokens=4)
    return answer.strip().lower(), session.scene_changes(0.1)


def test_mid_stream_answers_and_scene_changes(shipped):
    model, processor = shipped
    answered = cut_found = cuts = asked = 0
    for seed in demo_task.seeds("test", 60):
        clip = demo_task.sample(seed)
        # ask once the moving object has been seen for a while, before any cut
        ask_after = CHUNK if clip.cut_step in (2, 3) else 2 * CHUNK
        answer, changes = stream(model, processor, clip, ask_after)
        asked += 1
        answered += answer == clip.moving_colour
        if clip.cut_step is not None:
            cuts += 1
            cut_found += any(abs(step - clip.cut_step) <= 1 for step in changes)
    vidllm_ext.patch(model)
    assert answered >= 0.9 * asked, f"{answered}/{asked} mid-stream answers right"
    assert cuts >= 20 and cut_found >= 0.9 * cuts, f"cut found in {cut_found}/{cuts} clips"
