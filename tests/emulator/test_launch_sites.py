"""Every kernel launch in csrc/ goes through VIDLLM_LAUNCH, or the emulator cannot run it."""

import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
RAW_LAUNCH = re.compile(r"\w[\w:<>, ]*<<<")  # code, not a comment that names the syntax


def kernel_sources():
    if not CSRC.is_dir():  # tests run against an installed package without the sources
        pytest.skip("csrc/ is not beside the tests")
    return [p for p in CSRC.rglob("*.cu*") if "cuda_emulator" not in p.parts]


def test_no_raw_launches_or_extern_shared():
    offenders = []
    for path in kernel_sources():
        if path.name == "cuda_launch.cuh":  # where the macros expand to CUDA syntax
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            if RAW_LAUNCH.search(code) or "extern __shared__" in code:
                offenders.append(f"{path.relative_to(CSRC)}:{number}: {line.strip()}")
    assert not offenders, "use VIDLLM_LAUNCH / VIDLLM_DYNAMIC_SHARED:\n" + "\n".join(offenders)
