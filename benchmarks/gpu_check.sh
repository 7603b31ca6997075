#!/usr/bin/env bash
# The first minutes on a GPU, one command: build for this GPU's architecture only, run the CUDA
# tests, then every GPU benchmark in a short form, and write one summary with the result tables.
#
#   bash benchmarks/gpu_check.sh OUTDIR      # on a fresh copy of the repository, GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # print the plan; check every step's script parses
#
# Needs no network: the Python on PATH (or $PYTHON) already has torch, transformers, pybind11,
# cmake, ninja and pytest; the build uses no build isolation and installs no dependency. Every
# step has its own timeout and all of them share one deadline (GPU_CHECK_BUDGET_S, default 520 s,
# under 9 minutes with the summary; GPU_CHECK_STEP_TIMEOUT_S caps every step's timeout), so a
# hung step cannot eat the others' time. The summary
# (OUTDIR/summary.md) is written whatever fails; the exit code is 0 only when every step passed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-520}"
STEP_CAP_S="${GPU_CHECK_STEP_TIMEOUT_S:-}" # optional cap on every step's timeout (tests)

usage() {
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR | --dry-run" >&2
  exit 2
}

# ---- the plan: name | timeout s | script (relative to the root) | arguments -----------------
# Short forms: few repeats, no torch.compile, and where it is cheap the shape each target is
# defined at (benchmarks/README.md), so the verdicts below the tables are real ones.
# Benchmarks that take --markdown write their table to OUTDIR/tables/NAME.md. The op benchmarks
# are one command, `python -m vidllm_ext bench` (script BENCH_CLI: run from OUTDIR, so the
# installed package is imported), one step per family so each has its own timeout.
BENCH_CLI="vidllm_ext/bench/cli.py"
BENCHMARKS=(
  "frame_drop|45|$BENCH_CLI|--family frame_drop --device cuda --quick --shapes timechat-online --markdown @TABLE@"
  "routing|45|$BENCH_CLI|--family routing --device cuda --quick --shapes long-video --markdown @TABLE@"
  "kv_quant|45|$BENCH_CLI|--family kv_quant --device cuda --quick --markdown @TABLE@"
  "token_merge|60|$BENCH_CLI|--family token_merge --device cuda --quick --shapes qwen2.5-vl-7b --markdown @TABLE@"
  "kv_attention|75|$BENCH_CLI|--family kv_attention --device cuda --quick --shapes 128k --markdown @TABLE@"
  "routing_training|100|benchmarks/routing_training.py|--quick --layers 2 --markdown @TABLE@"
  "e2e_kv_quant|80|benchmarks/e2e_kv_quant.py|--context 16384 --layers 1 --new-tokens 16 --markdown @TABLE@"
  "e2e_frame_drop|100|benchmarks/e2e_frame_drop.py|--steps 128 --layers 2 --repeats 1"
)
BUILD_TIMEOUT_S=240
TESTS_TIMEOUT_S=200

# The command line of a planned script: the bench CLI as a module, the others as files.
command_of() {
  if [[ "$1" == "$BENCH_CLI" ]]; then echo "-m vidllm_ext bench"; else echo "$1"; fi
}

print_plan() {
  echo "gpu_check plan (root $ROOT, python $PYTHON, deadline ${BUDGET_S} s):"
  echo "  build   ${BUILD_TIMEOUT_S}s  VIDLLM_CUDA=1 VIDLLM_CUDA_ARCHS=<nvidia-smi compute_cap>" \
    "pip install --no-build-isolation --no-deps --no-index ."
  echo "  tests   ${TESTS_TIMEOUT_S}s  (cd tests && python -m pytest -m cuda -q --junitxml=OUTDIR/cuda_tests.xml)"
  local entry name timeout script args
  for entry in "${BENCHMARKS[@]}"; do
    IFS="|" read -r name timeout script args <<<"$entry"
    echo "  ${name}  ${timeout}s  python $(command_of "$script") ${args//@TABLE@/OUTDIR/tables/$name.md}"
  done
}

# Every planned script exists and parses, every option the plan gives it (and every --family and
# --shapes name) is declared in it (or in a module of benchmarks/ or vidllm_ext/bench/ it
# imports), every benchmarks/e2e_*.py and routing_training.py is in the plan, and so is every
# benchmark family of vidllm_ext/bench/ (a new GPU benchmark must be added here).
dry_run() {
  print_plan
  local steps=() entry name timeout script args
  for entry in "${BENCHMARKS[@]}"; do
    IFS="|" read -r name timeout script args <<<"$entry"
    steps+=("$script|$args")
  done
  "$PYTHON" - "$ROOT" "${steps[@]}" <<'EOF'
import ast
import sys
from pathlib import Path

root, steps = Path(sys.argv[1]), [step.split("|") for step in sys.argv[2:]]
problems = []


def strings_of(path: Path, seen: set) -> set:
    """String constants of a script and of the local modules it imports."""
    if path in seen or not path.is_file():
        return set()
    seen.add(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[-1] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[-1]] + [alias.name for alias in node.names]
        for name in names:
            for folder in (root / "benchmarks", root / "vidllm_ext" / "bench"):
                found |= strings_of(folder / f"{name}.py", seen)
    return found


for script, args in steps:
    if not (root / script).is_file():
        problems.append(f"{script}: missing")
        continue
    try:
        declared = strings_of(root / script, set())
    except SyntaxError as exc:
        problems.append(f"{script}: does not parse: {exc}")
        continue
    words = args.split()
    for option in (word for word in words if word.startswith("--")):
        if option not in declared:
            problems.append(f"{script}: option {option} is not declared by the script")
    for option, value in zip(words, words[1:]):
        if option in ("--family", "--shapes") and value not in declared:
            problems.append(f"{script}: {option} {value} is not declared by the script")
planned = {script for script, _ in steps}
for pattern in ("gpu_*.py", "e2e_*.py", "routing_training.py"):
    for path in sorted((root / "benchmarks").glob(pattern)):
        if f"benchmarks/{path.name}" not in planned:
            problems.append(f"benchmarks/{path.name}: a GPU benchmark missing from the plan")
planned_families = {
    value for _, args in steps for option, value in zip(args.split(), args.split()[1:])
    if option == "--family"
}
# A family module (vidllm_ext/bench/families.py) defines TITLE and is named after its family.
for path in sorted((root / "vidllm_ext" / "bench").glob("*.py")):
    body = ast.parse(path.read_text(), filename=str(path)).body
    targets = [t for node in body if isinstance(node, ast.Assign) for t in node.targets]
    if any(getattr(t, "id", None) == "TITLE" for t in targets) and path.stem not in planned_families:
        problems.append(f"vidllm_ext/bench/{path.name}: family {path.stem} missing from the plan")
if not (root / "tests").is_dir():
    problems.append("tests/: missing")
for problem in problems:
    print(f"gpu_check --dry-run: {problem}", file=sys.stderr)
print("gpu_check --dry-run: FAILED" if problems else f"gpu_check --dry-run: {len(steps)} scripts ok")
sys.exit(1 if problems else 0)
EOF
}

case "${1:-}" in
  --dry-run) dry_run; exit $? ;;
  "" | -*) usage ;;
esac
[[ $# -eq 1 ]] || usage
mkdir -p "$1/tables" "$1/logs" "$1/results" || exit 2
OUT="$(cd "$1" && pwd)"
START_S=$(date +%s)
STEPS_FILE="$OUT/steps.tsv"
printf "step\tstatus\tseconds\trc\tcommand\n" >"$STEPS_FILE"
touch "$OUT/.start"
# cmake and ninja from pip live next to the interpreter.
PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"
export PATH

# run_step NAME TIMEOUT DIR COMMAND...: runs COMMAND in DIR, output to logs/NAME.log, with the
# smaller of TIMEOUT and what is left of the budget (30 s kept for the summary).
run_step() {
  local name=$1 timeout=$2 dir=$3
  shift 3
  local left=$((BUDGET_S - ($(date +%s) - START_S) - 30))
  ((timeout > left)) && timeout=$left
  [[ -n "$STEP_CAP_S" ]] && ((timeout > STEP_CAP_S)) && timeout=$STEP_CAP_S
  if ((timeout < 5)); then
    printf "%s\tskipped (no time left)\t0\t-\t%s\n" "$name" "$*" >>"$STEPS_FILE"
    return 1
  fi
  echo "gpu_check: $name (timeout ${timeout}s)" >&2
  local begin rc status
  begin=$(date +%s)
  (cd "$dir" && timeout --kill-after=10 "$timeout" "$@") >"$OUT/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout (${timeout}s)" ;;
    *) status=failed ;;
  esac
  printf "%s\t%s\t%s\t%s\t%s\n" "$name" "$status" "$(($(date +%s) - begin))" "$rc" "$*" >>"$STEPS_FILE"
  return $rc
}

write_summary() {
  "$PYTHON" - "$OUT" "$ROOT" <<'EOF' || echo "gpu_check: the summary script failed; see $OUT/steps.tsv" >&2
import csv
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

out, root = Path(sys.argv[1]), Path(sys.argv[2])


def command(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"


commit = command("git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40")
commit = commit or "unknown (no git checkout)"
steps = list(csv.DictReader((out / "steps.tsv").open(), delimiter="\t"))
lines = [
    "# gpu_check summary",
    "",
    f"- **date**: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    "- **device**: " + command("nvidia-smi", "--query-gpu=name,compute_cap,driver_version,"
                               "memory.total", "--format=csv,noheader"),
    f"- **commit**: {commit}",
    f"- **build**: {(out / 'build_info.txt').read_text().strip() if (out / 'build_info.txt').exists() else 'not built'}",
    "",
    "| step | status | seconds |",
    "|:--|:--|--:|",
]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
junit = out / "cuda_tests.xml"
lines += ["", "## CUDA tests (pytest -m cuda)", ""]
if junit.exists():
    try:
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        count = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
        lines.append(f"passed {passed}, failed {count['failures']}, errors {count['errors']}, "
                     f"skipped {count['skipped']} (of {count['tests']} selected)")
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                lines.append(f"- FAILED {case.get('classname')}::{case.get('name')}")
    except ET.ParseError as exc:
        lines.append(f"unreadable junit file: {exc}")
else:
    lines.append("not run (see the steps above)")
lines += ["", "## Targets (benchmarks/README.md), from each benchmark's output", ""]
for log in sorted((out / "logs").glob("*.log")):
    if log.stem in ("build", "build_info", "cuda_tests"):
        continue
    text = [ln.strip().lstrip("- ") for ln in log.read_text(errors="replace").splitlines()]
    found = [ln for ln in text if ln.lower().startswith("target") or re.search(r"\b(PASS|MISS)\b", ln)]
    found = found or [ln for ln in text if re.search(r" vs .*\d+(\.\d+)?x", ln)]
    lines.append(f"### {log.stem}")
    lines += [f"- {ln}" for ln in found] or ["- no target line in the output (see its log)"]
    lines.append("")
tables = sorted((out / "tables").glob("*.md")) + sorted((out / "results").glob("*.md"))
lines += ["## Result tables", ""] + [f"- {t.relative_to(out)}" for t in tables]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

# ---- steps ---------------------------------------------------------------------------------
trap write_summary EXIT

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
if [[ -z "$arch" ]]; then
  arch=$("$PYTHON" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())' 2>/dev/null)
fi
if [[ -z "$arch" ]]; then
  echo "gpu_check: no GPU found (nvidia-smi and torch.cuda both failed)" >&2
  printf "detect\tfailed (no GPU)\t0\t1\tnvidia-smi --query-gpu=compute_cap\n" >>"$STEPS_FILE"
  exit 1
fi

failures=0
if run_step build "$BUILD_TIMEOUT_S" "$ROOT" env VIDLLM_CUDA=1 VIDLLM_CUDA_ARCHS="$arch" \
  MAX_JOBS="$(nproc)" "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index .; then
  # From OUTDIR, so the installed package is imported, not the source tree.
  run_step build_info 60 "$OUT" "$PYTHON" -c 'import vidllm_ext; print(vidllm_ext.build_info())' ||
    failures=$((failures + 1))
  tail -n 1 "$OUT/logs/build_info.log" >"$OUT/build_info.txt"
else
  failures=$((failures + 1))
fi
run_step cuda_tests "$TESTS_TIMEOUT_S" "$ROOT/tests" "$PYTHON" -m pytest -m cuda -q \
  -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" || failures=$((failures + 1))
for entry in "${BENCHMARKS[@]}"; do
  IFS="|" read -r name timeout script args <<<"$entry"
  read -r -a argv <<<"${args//@TABLE@/$OUT/tables/$name.md}"
  if [[ "$script" == "$BENCH_CLI" ]]; then # from OUTDIR: the installed package, not the tree
    run_step "$name" "$timeout" "$OUT" "$PYTHON" -m vidllm_ext bench "${argv[@]}"
  else
    run_step "$name" "$timeout" "$ROOT" "$PYTHON" "$ROOT/$script" "${argv[@]}"
  fi || failures=$((failures + 1))
done
# Benchmarks that always write into benchmarks/results (e2e_frame_drop): copy what this run wrote.
find "$ROOT/benchmarks/results" -type f -newer "$OUT/.start" -exec cp {} "$OUT/results/" \; 2>/dev/null
exit $((failures > 0))
