"""train_demo: the smoke run CI does, and the sequences it trains on."""

import json
import random
import subprocess
import sys

import pytest

from vidllm_ext.demo import model as demo_model
from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.train import IGNORE, clip_sequence, learning_rate, visible_questions

pytest.importorskip("transformers")


def test_smoke_run_writes_a_loadable_checkpoint_and_a_loss_curve(tmp_path):
    out = tmp_path / "run"
    command = ["-m", "vidllm_ext.demo.train", "--smoke", "--threads", "1", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 100%" in result.stderr  # the tqdm bar
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and len(metrics["validation"]) == 2
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model, processor = demo_model.load(out)
    clip = demo_task.sample(0)
    assert isinstance(demo_model.ask(model, processor, clip.frames, clip.questions[0][0]), str)


def test_loss_is_on_answers_and_end_of_answer_only():
    processor = demo_model.build_processor()
    clip = next(c for c in map(demo_task.sample, range(50)) if c.cut_step is not None)
    ids, labels, kinds = clip_sequence(processor, clip, 8, random.Random(0))
    assert len(ids) == len(labels) and sorted(kinds) == sorted(demo_task.QUESTIONS)
    answered = [token for token in labels if token != IGNORE]
    eos = processor.tokenizer.eos_token_id
    assert answered.count(eos) == len(kinds) and len(answered) == 2 * len(kinds)
    words = processor.decode([t for t in answered if t != eos]).split()
    assert sorted(words) == sorted(answer for _, answer in clip.questions)


def test_a_stream_cut_short_keeps_only_answerable_questions():
    clip = next(c for c in map(demo_task.sample, range(50)) if c.cut_step == 4)
    before = {demo_task.question_type(q) for q, _ in visible_questions(clip, 3)}
    after = {demo_task.question_type(q) for q, _ in visible_questions(clip, 5)}
    assert before == {"colour", "direction", "count"}
    assert after == set(demo_task.QUESTIONS)


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(step, 100, 1e-3, 10) for step in range(100)]
    assert rates[0] < rates[9] == pytest.approx(1e-3) and rates[-1] < 1e-4
