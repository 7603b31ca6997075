"""Routed fine-tuning under DDP and FSDP2: two CPU processes (gloo) launched by torchrun; the
checks themselves live in distributed/routing_ddp_train.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parent / "distributed" / "routing_ddp_train.py"
TIMEOUT_S = 240  # ~15 s on an idle 2-core machine; the margin is for shared, loaded hosts


def run_torchrun(*args: str) -> subprocess.CompletedProcess:
    import vidllm_ext

    environment = dict(os.environ, OMP_NUM_THREADS="1")
    # The workers import the vidllm_ext this test process imported (an installed copy, or a
    # checkout built in place), never a source tree without the compiled extension.
    package_root = str(Path(vidllm_ext.__file__).resolve().parents[1])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(SCRIPT), *args]
    try:
        return subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as timeout:
        output = (timeout.stdout or b"")[-4000:], (timeout.stderr or b"")[-4000:]
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{output[0]!r}\n{output[1]!r}")


def test_routed_ddp_and_fsdp2_on_two_cpu_processes():
    result = run_torchrun()
    output = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, output
    assert "routing_ddp_train: DDP routed:" in result.stdout, output
    assert "routing_ddp_train: DDP gate='none' with frozen routers" in result.stdout, output
    assert "routing_ddp_train: DDP with a text-only rank" in result.stdout, output
    assert "routing_ddp_train: FSDP2:" in result.stdout, output
    assert result.stdout.rstrip().endswith("routing_ddp_train: OK"), output
