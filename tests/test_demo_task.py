"""The procedural video QA task: deterministic, answerable only from the video, balanced."""

from collections import Counter

import numpy as np
import pytest

from vidllm_ext.demo import task as demo_task


def test_same_seed_same_clip_and_other_seeds_differ():
    first, again, other = demo_task.sample(5), demo_task.sample(5), demo_task.sample(6)
    assert np.array_equal(first.frames, again.frames) and first.questions == again.questions
    assert not np.array_equal(first.frames, other.frames)


def test_clip_format():
    clip = demo_task.sample(0)
    assert clip.frames.dtype == np.uint8
    assert clip.frames.shape == (demo_task.FRAMES, demo_task.SIZE, demo_task.SIZE, 3)
    for question, answer in clip.questions:
        assert isinstance(question, str) and isinstance(answer, str)
        assert answer == answer.strip().lower() and " " not in answer


def test_splits_do_not_overlap():
    splits = [set(demo_task.seeds(name, 5000)) for name in ("train", "validation", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2])
    assert not (splits[1] & splits[2])
    with pytest.raises(ValueError, match="split"):
        demo_task.seeds("dev", 1)


def test_cut_questions_follow_the_cut():
    for seed in range(40):
        clip = demo_task.sample(seed)
        kinds = {demo_task.question_type(q): a for q, a in clip.questions}
        if clip.cut_step is None:
            assert "cut" not in kinds and "after" not in kinds
            assert np.array_equal(clip.frames[0, :4, :4], clip.frames[-1, :4, :4])
        else:
            cut_frame = clip.cut_step * demo_task.FRAMES_PER_STEP
            assert kinds["cut"] == str(clip.cut_step)
            # the background changes at the cut and nowhere else
            changed = [
                not np.array_equal(clip.frames[f, :4, :4], clip.frames[f - 1, :4, :4])
                for f in range(1, demo_task.FRAMES)
            ]
            assert changed == [f == cut_frame for f in range(1, demo_task.FRAMES)]


def test_the_moving_object_has_the_answered_colour_and_direction():
    for seed in range(30):
        clip = demo_task.sample(seed)
        answers = {demo_task.question_type(q): a for q, a in clip.questions}
        last = (clip.cut_step or demo_task.FRAMES // 2) * demo_task.FRAMES_PER_STEP - 1
        colour = np.array(demo_task.COLOURS[answers["colour"]], np.uint8)
        centres = []
        for frame in (0, last):
            ys, xs = np.nonzero((clip.frames[frame] == colour).all(-1))
            centres.append(np.array([xs.mean(), ys.mean()]))
        step = np.sign(np.round(centres[1] - centres[0]))
        assert tuple(step) == demo_task.DIRECTIONS[answers["direction"]]
        assert np.abs(centres[1] - demo_task.CROSS[answers["where"]]).max() < 3


def test_answers_are_balanced():
    counts = {}
    for seed in demo_task.seeds("test", 600):
        for question, answer in demo_task.sample(seed).questions:
            counts.setdefault(demo_task.question_type(question), Counter())[answer] += 1
    assert set(counts) == set(demo_task.QUESTIONS)
    for kind, answers in counts.items():
        shares = [n / sum(answers.values()) for n in answers.values()]
        assert max(shares) < 0.45, (kind, answers)
