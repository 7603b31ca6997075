"""Feeding a tests/support/models.py SyntheticVideo to a StreamingSession in chunks of steps, and
the answer one generate call gives for the same video."""

import torch

from support.models import make_inputs

TIMESTAMP = [40, 41]  # the stand-in timestamp text models.make_inputs writes for Qwen3-VL


def feed(session, video, chunk_steps):
    if session.model.config.model_type == "llava_onevision":  # processed frames [f, 3, S, S]
        frames, start = video.frames_rgb(), 0
        for steps in chunk_steps:
            session.append_frames(frames[start : start + steps])
            start += steps
        return
    rows = video.pixel_rows()
    per_step = rows.shape[0] // video.steps
    start = 0
    for steps in chunk_steps:
        chunk = rows[start * per_step : (start + steps) * per_step]
        session.append_frames(chunk, video_grid_thw=[steps, video.grid, video.grid])
        start += steps


def answer_in_one_call(model, family, video, max_new_tokens=6):
    """The tokens ``model.generate`` appends greedily (no grad) to ``video`` followed by the
    question [50, 51, 52]: what a session fed the same video in chunks should answer."""
    inputs = make_inputs(family, [video], [0])
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return generated[0, inputs["input_ids"].shape[1] :]
