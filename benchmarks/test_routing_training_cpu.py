"""Smoke run of the routed training benchmark (``routing_training.py``) on the CPU, and its FLOP
model.

Run: ``pytest benchmarks/test_routing_training_cpu.py`` (about 10 s; nothing is timed for a
verdict).
"""

from __future__ import annotations

import pytest
from routing_training import main
from routing_training_setup import PRESETS, TextPreset, step_flops

pytest.importorskip("transformers")


def test_quick_cpu_run_reports_dense_and_routed(capsys) -> None:
    argv = ["--device", "cpu", "--preset", "cpu-small", "--quick", "--rounds", "1"]
    assert main([*argv, "--layers", "2", "--steps", "2"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    assert rows["dense"][1] == "-"  # no routed layer
    assert rows["routed"][1] == "1"  # "interleaved" on 2 layers: layer 1
    assert rows["routed"][2:5] == ["640", "/", "232"]  # 128 text + 2 x 256 video; 128 + 2 x 52
    assert "less step time" in text


def test_flop_model_counts_linear_and_causal_attention() -> None:
    preset = TextPreset(
        "unit", hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, full_layers=1
    )
    weights = 2 * 4 * 4 + 2 * 4 * 2 + 3 * 4 * 8  # q, o; k, v (kv width 2); gate, up, down
    forward = 2 * 5 * weights + 4 * 2 * 2 * 5 * 6 / 2 + 2 * 3 * 4 * 10
    assert step_flops(preset, 1, [5], logits=3) == 3 * forward
    seven_b = PRESETS["qwen2.5-vl-7b"]
    dense = step_flops(seven_b, 4, [4224] * 4, logits=64)
    routed = step_flops(seven_b, 4, [4224, 960, 4224, 960], logits=64)
    assert 0.35 < 1 - routed / dense < 0.40  # half the layers at 960 of 4224 tokens
