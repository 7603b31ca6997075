"""`vidllm-ext demo` with a local checkpoint and a local video file."""

import subprocess
import sys

import numpy as np
import pytest
from support.demo import run_demo
from support.models import build_model

pytest.importorskip("transformers")


def write_video(path, frames=12):
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(frames):
            image = background.copy()
            image[20:50, 10 + 8 * index : 40 + 8 * index] = [255, 0, 0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_demo_on_a_video_file(tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video)
    result = run_demo("--video", str(video))
    assert result.returncode == 0, result.stderr
    assert "clip: 12 frames 120x160" in result.stdout and "video tokens" in result.stdout


def test_demo_with_a_local_checkpoint(tmp_path):
    build_model("qwen2_5_vl").save_pretrained(tmp_path / "checkpoint")
    result = run_demo("--model", str(tmp_path / "checkpoint"))
    assert result.returncode == 0, result.stderr
    assert f"model: {tmp_path / 'checkpoint'}" in result.stdout


def test_demo_video_without_pyav_says_what_to_install():
    code = (
        "import sys; sys.modules['av'] = None\n"
        "from vidllm_ext.demo.run import read_video\n"
        "read_video('clip.mp4')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "pip install 'vidllm-ext[video]'" in result.stderr


def test_demo_default_answers_a_task_clip_and_saves_the_strip(tmp_path):
    strip = tmp_path / "strip.png"
    result = run_demo("--strip", str(strip))
    assert result.returncode == 0, result.stderr
    assert "trained on demo_task" in result.stdout and "scene cut at step" in result.stdout
    truths = [
        line.split("(true answer: ")[1].rstrip(")")
        for line in result.stdout.splitlines()
        if "(true answer: " in line
    ]
    rows = [line.split() for line in result.stdout.splitlines() if " answer " in line[:12]]
    assert len(truths) == len(rows) == 6
    unpatched = [row[2] for row in rows]  # "Q1 answer <unpatched> <DTD> ..."
    assert unpatched == truths
    assert strip.read_bytes()[:4] == b"\x89PNG"
