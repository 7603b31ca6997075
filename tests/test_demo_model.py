"""The shipped demo model: loads offline, answers from the video, keeps its measured accuracy
(CI's check against benchmarks/results), and answers the same way through every patch."""

import json
from pathlib import Path

import pytest

import vidllm_ext
from vidllm_ext.demo import model as demo_model
from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.eval import evaluate
from vidllm_ext.demo.run import DEMO_KV, QA_MERGE, QA_THRESHOLD

pytest.importorskip("transformers")

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MAX_BYTES = 25 * 1024 * 1024
CI_CLIPS = 100


@pytest.fixture(scope="module")
def shipped():
    return demo_model.load()


def recorded_accuracy() -> float:
    """The unpatched accuracy on the first 100 test clips in the newest results file."""
    files = sorted(RESULTS.glob("accuracy_video_qa_*.json"))
    assert files, f"no accuracy_video_qa_*.json in {RESULTS}"
    return json.loads(files[-1].read_text())["unpatched"]["first_100_accuracy"]


def test_weights_ship_inside_the_package_and_are_small():
    weights = demo_model.WEIGHTS / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= MAX_BYTES
    for name in ("config.json", "tokenizer.json", "vidllm_demo_processor.json"):
        assert (demo_model.WEIGHTS / name).is_file(), name


def test_accuracy_on_100_test_clips_matches_the_results_file(shipped):
    model, processor = shipped
    scores = evaluate(model, processor, demo_task.seeds("test", CI_CLIPS))
    assert scores.accuracy >= 0.9, scores.per_type()
    assert abs(scores.accuracy - recorded_accuracy()) <= 0.02, scores.per_type()


def test_answers_depend_on_the_video(shipped):
    model, processor = shipped
    question = demo_task.QUESTIONS["colour"]
    answers = {
        demo_model.ask(model, processor, demo_task.sample(seed).frames, question)
        for seed in demo_task.seeds("test", 12)
    }
    assert len(answers) >= 3 and answers <= set(demo_task.COLOURS)


@pytest.mark.parametrize(
    "techniques",
    [
        {"dtd": vidllm_ext.DTDConfig(QA_THRESHOLD)},
        {"dtd": vidllm_ext.DTDConfig(QA_THRESHOLD), "merge": QA_MERGE},
        {"kv": DEMO_KV},
        {"mod": vidllm_ext.MoDConfig(keep_ratio=1.0)},
    ],
    ids=["dtd", "dtd+merge", "kv", "mod"],
)
def test_ask_works_on_a_patched_model(shipped, techniques):
    model, processor = shipped
    clips = [demo_task.sample(seed) for seed in demo_task.seeds("test", 4)]
    try:
        vidllm_ext.patch(model, **techniques)
        answers = [demo_model.ask(model, processor, c.frames, c.questions[0][0]) for c in clips]
    finally:
        vidllm_ext.patch(model)
    truths = [c.questions[0][1] for c in clips]
    assert sum(a == t for a, t in zip(answers, truths)) >= 3, (answers, truths)


def test_load_without_weights_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vidllm_ext\.demo\.train"):
        demo_model.load(tmp_path)
