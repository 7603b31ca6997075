#!/usr/bin/env bash
# CI: every CUDA kernel on the host emulator of the CUDA execution model
# (csrc/cuda_emulator/README.md). Reinstalls the package into .ci/run's virtual environment
# (.ci-venv, created here with torch if .ci/run has not made it) with VIDLLM_CUDA_EMULATION=1:
# the CPU kernels plus the emulated CUDA kernels, then runs the
# emulator's own tests and shares of the CUDA-marked tests under the "forward" and the seeded
# "random" schedule. On a machine with a usable GPU the CUDA-marked tests run on the GPU instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .ci-venv/bin/python ]; then
  python3 -m venv .ci-venv
  .ci-venv/bin/python -m pip install --quiet --upgrade pip
  .ci-venv/bin/python -m pip install torch==2.13.0
fi
source .ci-venv/bin/activate

start=$SECONDS
# CPU kernels + emulated CUDA only: the README install before this step already compiled (and
# so checked) the nvcc kernels, and no GPU is here to run them.
VIDLLM_CUDA=0 VIDLLM_CUDA_EMULATION=1 pip install ".[test]"
echo "emulator build: $((SECONDS - start)) s"
seed="${VIDLLM_EMULATOR_SEED:-1}"
cd tests  # from here the installed package is imported, not the source folder
python -c "import vidllm_ext, sys; sys.exit(not vidllm_ext.build_info()['cuda_emulation'])"
start=$SECONDS
python -m pytest -q emulator
# The CUDA-marked tests under the "forward" schedule and the seeded "random" schedule (block order
# and the order threads resume after each barrier or collective). To stay within CI's time budget
# each schedule runs a fixed 1-in-${VIDLLM_EMULATOR_SAMPLE:-8} share of the tests, a different
# share per schedule (.ci/sanitize.sh runs a third under ASan + UBSan); VIDLLM_EMULATOR_SAMPLE=1
# runs every test under both.
share=0
for schedule in ${VIDLLM_EMULATOR_SCHEDULES:-forward random}; do
  python -m pytest -q -m cuda --emulator-schedule "$schedule" --emulator-seed "$seed" \
    --emulator-sample "${VIDLLM_EMULATOR_SAMPLE:-8}" --emulator-share "$share"
  share=$(((share + 1) % ${VIDLLM_EMULATOR_SAMPLE:-8}))
done
echo "emulated tests: $((SECONDS - start)) s"
