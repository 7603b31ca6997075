#!/usr/bin/env bash
# CI (issue 14): install again the way users do, after .ci/run has created .ci-venv and installed
# the project from this checkout as README.md's quick start says.
#   1. touch one .cpp file and `pip install .` again into .ci-venv, in the same checkout;
#   2. `pip install .` into a fresh second virtual environment, from the same folder.
# Both are CPU-only builds (VIDLLM_CUDA=0) to keep CI short. Each imports the installed package
# from outside the source tree and prints build_info(). Expects: python3 on PATH, network for pip.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$PWD"
ci_python="$checkout/.ci-venv/bin/python"
export VIDLLM_CUDA=0

second_venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$second_venv")"' EXIT

show_installed() {  # $1: the venv's python (absolute); from / so the install, not the source, loads
    (cd / && "$1" -c '
import json, vidllm_ext
info = vidllm_ext.build_info()
print(vidllm_ext.__file__, json.dumps(info))
assert not info["cuda_compiled"], "VIDLLM_CUDA=0 was not honoured: this is not the new build"
')
}

echo "== reinstall into .ci-venv after touching a .cpp file"
touch python/module.cpp
"$ci_python" -m pip install --quiet "$checkout"
show_installed "$ci_python"

echo "== install into a second virtual environment from the same checkout"
python3 -m venv "$second_venv"
"$second_venv/bin/python" -m pip install --quiet --upgrade pip
"$second_venv/bin/python" -m pip install --quiet torch==2.13.0
# The base install, without the [hf] extra: `import vidllm_ext` needs no transformers.
"$second_venv/bin/python" -m pip install --quiet "$checkout"
show_installed "$second_venv/bin/python"
