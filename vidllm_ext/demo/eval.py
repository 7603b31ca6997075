"""Accuracy of a video QA model on :mod:`vidllm_ext.demo.task` clips, per question type.

Example:
    >>> model, processor = vidllm_ext.demo.model.load()
    >>> scores = evaluate(model, processor, demo_task.seeds("test", 100))
    >>> scores.accuracy, scores.per_type()["colour"]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from vidllm_ext.demo import task as demo_task
from vidllm_ext.demo.model import ask


@dataclass
class Scores:
    """Correct and asked counts per question type."""

    correct: dict = field(default_factory=lambda: defaultdict(int))
    asked: dict = field(default_factory=lambda: defaultdict(int))

    def add(self, kind: str, right: bool) -> None:
        self.asked[kind] += 1
        self.correct[kind] += int(right)

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / max(1, sum(self.asked.values()))

    def per_type(self) -> dict[str, float]:
        return {kind: self.correct[kind] / self.asked[kind] for kind in sorted(self.asked)}


def evaluate(model, processor, seeds, progress: bool = False, before_clip=None) -> Scores:
    """Asks every question of each seed's clip, one question per generate (the task's rule: the
    stripped, lower-cased answer equals the truth). ``before_clip(clip)``, when given, runs
    before a clip's questions (e.g. to reset per-clip statistics)."""
    scores = Scores()
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc="evaluate", unit="clip")
    for seed in seeds:
        clip = demo_task.sample(seed)
        if before_clip is not None:
            before_clip(clip)
        for question, answer in clip.questions:
            reply = ask(model, processor, clip.frames, question)
            scores.add(demo_task.question_type(question), reply == answer)
    return scores
