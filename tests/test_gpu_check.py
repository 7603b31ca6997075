"""benchmarks/gpu_check.sh, the first command to run on a GPU: its dry run (the plan, every
script present, parsing and taking the options the plan gives it, every benchmark family
planned), and a whole run on stubs (a fake nvidia-smi, pip, pytest, bench command and
benchmarks, one of them hung) that must still write the summary within its deadline."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
GPU_BENCHMARKS = sorted(
    path.name
    for pattern in ("e2e_*.py", "routing_training.py")
    for path in (ROOT / "benchmarks").glob(pattern)
)
FAMILIES = ("frame_drop", "token_merge", "routing", "kv_quant", "kv_attention")

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or not SCRIPT.exists(), reason="needs bash and a source tree"
)


def run_check(root: Path, *args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


def test_dry_run_plans_every_gpu_benchmark():
    result = run_check(ROOT, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "scripts ok" in result.stdout
    assert "pytest -m cuda" in result.stdout and "--no-build-isolation" in result.stdout
    assert {"e2e_frame_drop.py", "e2e_kv_quant.py", "routing_training.py"} <= set(GPU_BENCHMARKS)
    for name in GPU_BENCHMARKS:
        assert f"benchmarks/{name}" in result.stdout
    for family in FAMILIES:
        assert f"python -m vidllm_ext bench --family {family} --device cuda" in result.stdout


def copy_tree(tmp_path: Path) -> Path:
    """The parts of the repository the dry run reads."""
    root = tmp_path / "repo"
    shutil.copytree(
        ROOT / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("results")
    )
    shutil.copytree(ROOT / "vidllm_ext" / "bench", root / "vidllm_ext" / "bench")
    (root / "tests").mkdir()
    return root


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing", "benchmarks/routing_training.py: missing"),
        ("syntax", "benchmarks/routing_training.py: does not parse"),
        ("option", "option --layers is not declared"),
        ("shape", "--shapes timechat-online is not declared"),
        ("unplanned", "benchmarks/e2e_new.py: a GPU benchmark missing from the plan"),
        ("family", "vidllm_ext/bench/new.py: family new missing from the plan"),
    ],
)
def test_dry_run_fails_on_a_broken_plan(tmp_path, breakage, message):
    root = copy_tree(tmp_path)
    training = root / "benchmarks" / "routing_training.py"
    bench = root / "vidllm_ext" / "bench"
    if breakage == "missing":
        training.unlink()
    elif breakage == "syntax":
        training.write_text(training.read_text() + "\ndef broken(:\n")
    elif breakage == "option":
        training.write_text(training.read_text().replace('"--layers"', '"--layer-count"'))
    elif breakage == "shape":
        shapes = bench / "shapes.py"
        shapes.write_text(shapes.read_text().replace('"timechat-online"', '"timechat"'))
    elif breakage == "unplanned":
        (root / "benchmarks" / "e2e_new.py").write_text("print('new')\n")
    else:
        (bench / "new.py").write_text("TITLE = 'A new benchmark family'\n")
    result = run_check(root, "--dry-run")
    assert result.returncode == 1
    assert message in result.stderr


def write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


STUB_BENCHMARK = (
    "import sys, time\n"
    "args = sys.argv[1:]\n"
    "if '--markdown' in args:\n"
    "    path = args[args.index('--markdown') + 1]\n"
    "    open(path, 'w').write('| a |\\n|--|\\n| 1 |\\n')\n"
    "print('target GPU ' + sys.argv[1] + ': 1.23x PASS')\n"
)


def stub_repository(tmp_path: Path) -> tuple[Path, dict]:
    """A repository whose benchmarks are stubs printing a target line (e2e_frame_drop hangs), and a
    PATH with a fake nvidia-smi and a python that fakes pip, pytest and the bench command."""
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    (root / "tests").mkdir()
    shutil.copy(SCRIPT, root / "benchmarks" / "gpu_check.sh")
    plan = run_check(ROOT, "--dry-run").stdout
    for line in plan.splitlines():
        words = line.split()
        if len(words) > 3 and words[2] == "python" and words[3].startswith("benchmarks/"):
            body = STUB_BENCHMARK.replace("sys.argv[1]", repr(words[0]))
            if words[0] == "e2e_frame_drop":
                body = "import time\ntime.sleep(600)\n"
            (root / words[3]).write_text(body)
    (tmp_path / "stub_bench.py").write_text(STUB_BENCHMARK.replace("sys.argv[1]", "sys.argv[2]"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(
        bin_dir / "nvidia-smi",
        '#!/usr/bin/env bash\nif [[ "$1" == --query-gpu=compute_cap ]]; then echo 9.0; '
        'else echo "Stub GPU, 9.0, 1.0, 80 GiB"; fi\n',
    )
    junit = (
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase classname="test_x" name="a"/><testcase classname="test_x" name="b"/>'
        '<testcase classname="test_x" name="c"><failure message="no"/></testcase>'
        "</testsuite></testsuites>"
    )
    write_executable(
        bin_dir / "python",
        "#!/usr/bin/env bash\n"
        'if [[ "$1 $2" == "-m pip" ]]; then env | grep ^VIDLLM_ > "$STUB_LOG"; exit 0; fi\n'
        f'if [[ "$1 $2" == "-m vidllm_ext" ]]; then shift 3; exec {sys.executable} '
        f'{tmp_path / "stub_bench.py"} "$@"; fi\n'
        'if [[ "$1 $2" == "-m pytest" ]]; then\n'
        '  for arg in "$@"; do [[ $arg == --junitxml=* ]] && xml=${arg#--junitxml=}; done\n'
        f"  echo '{junit}' > \"$xml\"; exit 1\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n',
    )
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": str(bin_dir / "python"),
        "STUB_LOG": str(tmp_path / "pip_env.txt"),
        "GPU_CHECK_STEP_TIMEOUT_S": "8",  # the hung step is cut after 8 s
    }
    return root, env


def test_run_on_stubs_writes_the_summary_despite_a_hung_step(tmp_path):
    root, env = stub_repository(tmp_path)
    out = tmp_path / "out"
    result = run_check(root, str(out), env=env, timeout=90)
    assert result.returncode == 1, "a failed test and a timeout make the run fail"
    pip_env = set((tmp_path / "pip_env.txt").read_text().split())
    assert {"VIDLLM_CUDA=1", "VIDLLM_CUDA_ARCHS=90"} <= pip_env
    summary = (out / "summary.md").read_text()
    assert "Stub GPU, 9.0" in summary
    assert "passed 2, failed 1, errors 0, skipped 0" in summary
    assert "FAILED test_x::c" in summary
    assert "target GPU frame_drop: 1.23x PASS" in summary
    assert "target GPU kv_attention: 1.23x PASS" in summary
    assert "target GPU routing_training: 1.23x PASS" in summary
    assert "| e2e_frame_drop | timeout" in summary
    assert "tables/routing.md" in summary
    assert (out / "tables" / "routing.md").exists()
