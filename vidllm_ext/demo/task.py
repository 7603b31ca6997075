"""A procedural video question-answering task, deterministic from a seed: the demo model's
training data and the accuracy every technique must keep.

A clip is 16 frames of 84 x 84 pixels: a low-contrast textured background, one to three objects
of distinct colours and shapes at fixed anchor points (a 3 x 3 grid of 28-pixel cells, the
demo model's token grid), one of which moves to a neighbouring anchor, and in half the clips a
scene cut at an even frame after which a new background holds one new static object. Every
question's answer is one word or number, and needs the video:

========== ==================================================== =============================
type       question                                             answers
========== ==================================================== =============================
colour     what colour is the moving object ?                   red green blue yellow purple
                                                                cyan
direction  which way does the moving object go ?                left right up down
count      how many objects are in the first scene ?            1 2 3
where      where does the moving object end up ?                left right top bottom center
cut        at which step does the scene change ?                2 .. 6 (temporal steps of 2
                                                                frames; asked when there is a cut)
after      what colour is the object after the cut ?            a colour (asked when there is a
                                                                cut)
========== ==================================================== =============================

Splits by seed: ``seeds("test", n)``, ``seeds("validation", n)``, ``seeds("train", n)`` never
overlap.

Example:
    >>> clip = sample(7)
    >>> clip.frames.shape, clip.frames.dtype
    ((16, 84, 84, 3), dtype('uint8'))
    >>> clip.questions[0]
    ('what colour is the moving object ?', 'red')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAMES, SIZE, CELL = 16, 84, 28
FRAMES_PER_STEP = 2  # Qwen2.5-VL encodes frames in temporal pairs
RADIUS = 10
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (240, 220, 30),
    "purple": (160, 40, 220),
    "cyan": (30, 210, 220),
}
SHAPES = ("square", "circle", "triangle", "diamond")
# Anchor centres (x, y); the mover ends on one of the cross's five, static objects sit in corners.
CROSS = {
    "center": (42, 42),
    "left": (14, 42),
    "right": (70, 42),
    "top": (42, 14),
    "bottom": (42, 70),
}
CORNERS = ((14, 14), (70, 14), (14, 70), (70, 70))
# Mover's direction -> unit step; a mover ending at a side anchor came from the centre.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ARRIVES_BY = {"left": "left", "right": "right", "top": "up", "bottom": "down"}
QUESTIONS = {
    "colour": "what colour is the moving object ?",
    "direction": "which way does the moving object go ?",
    "count": "how many objects are in the first scene ?",
    "where": "where does the moving object end up ?",
    "cut": "at which step does the scene change ?",
    "after": "what colour is the object after the cut ?",
}
QUESTION_TYPES = {text: name for name, text in QUESTIONS.items()}
CUT_STEPS = (2, 3, 4, 5, 6)
SPLIT_OFFSETS = {"test": 1_000_000, "validation": 2_000_000, "train": 10_000_000}


@dataclass
class Clip:
    """frames: uint8 [FRAMES, SIZE, SIZE, 3]; questions: (question, answer) strings; cut_step:
    the temporal step (frame // 2) at which the scene changes, or None."""

    frames: np.ndarray
    questions: list[tuple[str, str]]
    cut_step: int | None
    moving_colour: str


def seeds(split: str, count: int, start: int = 0) -> list[int]:
    """``count`` seeds of ``split`` ("train", "validation" or "test"), from its ``start``-th on."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split: expected one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    return list(range(SPLIT_OFFSETS[split] + start, SPLIT_OFFSETS[split] + start + count))


def question_type(question: str) -> str:
    """The type ("colour", "direction", ...) of one of the task's questions."""
    return QUESTION_TYPES[question]


def sample(seed: int) -> Clip:
    """The clip of ``seed`` with its questions (same seed, same clip, on every machine)."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 4))
    colours = [str(c) for c in rng.permutation(list(COLOURS))[: count + 1]]
    shapes = [str(s) for s in rng.permutation(SHAPES)[:count]]
    end_name = str(rng.choice(list(CROSS)))
    direction = ARRIVES_BY.get(end_name) or str(rng.choice(list(DIRECTIONS)))
    cut_step = int(rng.choice(CUT_STEPS)) if rng.random() < 0.5 else None
    first_frames = FRAMES if cut_step is None else cut_step * FRAMES_PER_STEP
    frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    background = _background(rng)
    corners = rng.permutation(len(CORNERS))
    end = np.array(CROSS[end_name], float)
    start = end - CELL * np.array(DIRECTIONS[direction], float)
    for frame in range(first_frames):
        image = background.copy()
        for index in range(1, count):
            _draw(image, CORNERS[corners[index]], shapes[index], colours[index])
        progress = frame / max(1, first_frames - 1)
        _draw(image, start + (end - start) * progress, shapes[0], colours[0])
        frames[frame] = image
    questions = [
        (QUESTIONS["colour"], colours[0]),
        (QUESTIONS["direction"], direction),
        (QUESTIONS["count"], str(count)),
        (QUESTIONS["where"], end_name),
    ]
    if cut_step is not None:
        image = _background(rng)
        _draw(image, CORNERS[int(rng.integers(len(CORNERS)))], str(rng.choice(SHAPES)), colours[-1])
        frames[first_frames:] = image
        questions += [(QUESTIONS["cut"], str(cut_step)), (QUESTIONS["after"], colours[-1])]
    return Clip(frames, questions, cut_step, colours[0])


def _background(rng: np.random.Generator) -> np.ndarray:
    """uint8 [SIZE, SIZE, 3]: a grey-ish base tint with low-contrast blocky texture."""
    base = rng.uniform(90, 150) + rng.uniform(-12, 12, size=3)
    coarse = rng.uniform(-14, 14, size=(SIZE // 7, SIZE // 7, 1))
    texture = np.kron(coarse, np.ones((7, 7, 1)))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def _draw(image: np.ndarray, centre, shape: str, colour: str) -> None:
    """Paints a filled shape of radius RADIUS centred at (x, y) in place."""
    x, y = float(centre[0]), float(centre[1])
    rows, columns = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    dx, dy = columns - x, rows - y
    if shape == "square":
        inside = (np.abs(dx) <= RADIUS * 0.85) & (np.abs(dy) <= RADIUS * 0.85)
    elif shape == "circle":
        inside = dx**2 + dy**2 <= RADIUS**2
    elif shape == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= RADIUS
    else:  # triangle, apex up
        inside = (dy <= RADIUS * 0.8) & (dy >= -RADIUS) & (np.abs(dx) <= (dy + RADIUS) / 2)
    image[inside] = COLOURS[colour]
