#!/usr/bin/env bash
# Sanitizer step: builds the C++ kernels, the bindings and the emulated CUDA kernels with
# AddressSanitizer + UndefinedBehaviorSanitizer (VIDLLM_SANITIZE=1 VIDLLM_CUDA_EMULATION=1) into a
# venv of its own and runs the emulator's own tests, the op-level tests (their CUDA cases on the
# emulator: share 2 of a fixed 1-in-N split, N = VIDLLM_EMULATOR_ASAN_SAMPLE, default 8, so none
# of the shares .ci/emulator.sh runs; 0 leaves them out) and the fuzz suite, with every report
# fatal and visible.
#
#   bash .ci/sanitize.sh                 # default fuzz budget
#   VIDLLM_FUZZ_CALLS=50000 bash .ci/sanitize.sh
#
# Work folder: $VIDLLM_SANITIZE_DIR (default .ci-sanitize/, git-ignored): venv/ and src/ (a copy
# of the work tree; its build/ folder is kept between runs, so a rerun recompiles what changed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${VIDLLM_SANITIZE_DIR:-$ROOT/.ci-sanitize}
mkdir -p "$WORK"

if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
fi
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet torch==2.13.0
# The build requirements of pyproject.toml, so the build folder survives between runs.
mapfile -t BUILD_REQUIRES < <("$PY" -c \
  'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
"$PY" -m pip install --quiet "${BUILD_REQUIRES[@]}"

# A copy of the work tree (tracked and untracked, not ignored files), so this build never
# touches the developer's build folder.
find "$WORK/src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$WORK/src"
# With the emulated CUDA kernels (VIDLLM_CUDA_EMULATION=1), sanitized as well.
VIDLLM_SANITIZE=1 VIDLLM_CUDA=0 VIDLLM_CUDA_EMULATION=1 PATH="$WORK/venv/bin:$PATH" \
  "$PY" -m pip install --quiet --no-build-isolation "$WORK/src[test]"

# libasan must come first; libstdc++ right after it, or ASan's __cxa_throw interceptor fails at
# the first C++ exception (the bindings turn bad arguments into exceptions).
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBSTDCXX=$(gcc -print-file-name=libstdc++.so)
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
# Python and torch are not instrumented: leak checking would report their allocations.
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export VIDLLM_SANITIZED=1

OP_TESTS=(
  test_frame_drop_ops.py test_frame_drop_errors.py
  test_token_merge_ops.py test_token_merge_errors.py test_token_merge_hierarchical.py
  test_routing_ops.py test_routing_topk.py test_routing_update.py test_routing_errors.py
  test_kv_quant_pack.py test_kv_quant_groups.py test_kv_quant_errors.py test_kv_quant_scheme.py
  test_kv_attention.py test_kv_attention_errors.py test_structure_errors.py
)
cd "$ROOT/tests"
# -s: sanitizer reports go to the terminal, not into pytest's captured output.
"$PY" -c "import vidllm_ext, sys; sys.exit(not vidllm_ext.build_info()['cuda_emulation'])"
if [ "${VIDLLM_EMULATOR_ASAN_SAMPLE:-8}" -gt 0 ]; then
  sample=${VIDLLM_EMULATOR_ASAN_SAMPLE:-8}
  CUDA_CASES=(--emulator-sample "$sample" --emulator-share $((2 % sample)))
else
  CUDA_CASES=(-m "not cuda")
fi
"$PY" -m pytest -q -s -p no:cacheprovider emulator "${OP_TESTS[@]}" fuzz \
  --emulator-schedule random --emulator-seed "${VIDLLM_EMULATOR_SEED:-1}" "${CUDA_CASES[@]}"
