"""Feeding a tests/support/models.py SyntheticVideo to a StreamingSession in chunks of steps."""

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
