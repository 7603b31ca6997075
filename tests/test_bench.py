"""The benchmark command, ``python -m vidllm_ext bench``: every family runs on the CPU at the tiny
smoke shapes and prints its table; wrong families, shapes and devices are clear errors; a case
that cannot run is reported in its row, never dropped."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from vidllm_ext.bench import cli, frame_drop, harness, kv_attention, routing
from vidllm_ext.bench.families import FAMILIES
from vidllm_ext.bench.tables import Column

TECHNIQUES = ["frame_drop", "token_merge", "routing", "kv_quant", "kv_attention"]


def test_the_families_are_the_five_techniques():
    assert list(FAMILIES) == TECHNIQUES
    assert all("tiny" in family.shapes for family in FAMILIES.values())


def test_quick_run_prints_a_table_per_family(capsys, tmp_path):
    argv = [
        "--device",
        "cpu",
        "--quick",
        "--shapes",
        "tiny",
        "--markdown",
        str(tmp_path / "all.md"),
    ]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    for number, name in enumerate(TECHNIQUES, start=1):
        assert f"== [{number}/5] {name} ==" in err  # progress, one line per family
        assert f"[{name}] tiny (shape 1/1), case 1:" in err  # and per case
        report = out.split(f"{name}: ", 1)[1]
        header = next(line for line in report.splitlines() if line.startswith("case"))
        assert "op ms" in header and "GB/s" in header and "GFLOP/s" in header
    assert "vs ref" in out and "vs bf16 SDPA" in out  # each family's own baselines
    assert "target CPU op >= 1.5x faster than the reference" in out
    assert (tmp_path / "all.md").read_text().count("\n# ") == 4  # five reports in one file


def test_module_command_runs_one_family_and_writes_its_results_file(tmp_path):
    options = ["--family", "routing", "--device", "cpu", "--quick", "--shapes", "tiny"]
    result = subprocess.run(
        [sys.executable, "-m", "vidllm_ext", "bench", *options, "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "routing: Layer-skip routing op benchmark" in result.stdout
    assert "frame_drop" not in result.stdout
    (written,) = tmp_path.glob("routing_*.md")
    assert "| gather |" in written.read_text().replace("  ", " ")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--family", "dtd"], "argument --family: invalid choice: 'dtd'"),
        (["--shapes", "huge"], "--shapes: huge is no shape of frame_drop, token_merge"),
        (["--shapes", "longvlm"], "--shapes: frame_drop has none of longvlm"),
    ],
)
def test_unknown_family_or_shape_is_a_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--device", "cpu", "--quick"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_usable_gpu_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli.main(["--family", "frame_drop", "--device", "cuda", "--quick"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_quick_keeps_the_smallest_shape():
    family = FAMILIES["kv_attention"]
    shapes = family.select_shapes(["128k", "32k-b8", "32k"], torch.device("cpu"), quick=True)
    assert [shape.name for shape in shapes] == ["32k"]


def test_a_case_that_cannot_run_is_reported_in_its_row(capsys):
    def cases(shape, device, quick):
        yield harness.Case(
            cells=("the only case",),
            op="the op failed: no kernel for this device",
            baselines=(harness.Baseline("ref", lambda: None),),
            bytes=8,
            flops=0,
        )

    family = harness.Family(
        name="fake",
        title="Fake benchmark",
        shapes={"tiny": SimpleNamespace(name="tiny", about="a fake shape", elements=1)},
        default_shapes={"cpu": ("tiny",)},
        columns=(Column("what", numeric=False),),
        cases=cases,
        targets=lambda device, measured, copy: ["target: not measured (the op failed)"],
        facts=lambda shapes: [],
    )
    report = harness.run_family(family, torch.device("cpu"), [family.shapes["tiny"]], True, None)
    row = next(line for line in report.text.splitlines() if "the only case" in line)
    assert "n/a [1]" in row
    assert "[1] the op failed: no kernel for this device" in report.text
    assert "target: not measured (the op failed)" in report.text


def measured(family: str, shape: str, spec, op_s: float, baselines: dict, mb: float):
    return harness.Measured(
        shape=FAMILIES[family].shapes[shape],
        cells=(),
        bytes=int(mb * 1e6),
        flops=0,
        spec=spec,
        op_s=op_s,
        baseline_s=baselines,
    )


def test_gpu_targets_read_the_measurements():
    # No GPU here: the CUDA-only verdicts are checked on made-up measurements.
    cuda, copy = torch.device("cuda"), 1e12  # 1 TB/s of copy bandwidth
    drop = frame_drop.CASES[0]  # drop feature/absolute
    lines = frame_drop.targets(
        cuda, [measured("frame_drop", "timechat-online", drop, 1e-3, {}, 900.0)], copy
    )
    assert lines[-1].endswith("timechat-online drop feature/absolute: 90.0% PASS")
    gather = measured("routing", "long-video", "gather", 1e-3, {}, 500.0)
    assert routing.targets(cuda, [gather], copy)[0].endswith("gather: 50.0% MISS")
    packed = measured("kv_attention", "128k", "1.5/1.58", 1e-3, {"bf16 SDPA": 5e-3}, 700.0)
    lines = kv_attention.targets(cuda, [packed], copy)
    assert "speedup over bf16 SDPA >= 4x, B=1: 5.00x PASS" in lines[0]
    assert "fraction of copy bandwidth >= 60%, B=1: 70.0% PASS" in lines[1]
    assert "2/2 at 131072 tokens" in lines[2] and "not measured" in lines[2]
    assert "needs --device cpu" in lines[3]
