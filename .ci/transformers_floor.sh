#!/usr/bin/env bash
# CI, second half of the transformers window: the model-level tests (pytest marker
# `transformers`, set in tests/conftest.py) on the declared floor, in a fresh environment (a
# downgrade inside a newer one leaves newer companions behind, e.g. `kernels`, and 5.12 then
# fails at import). The package is the one the README install built into .ci-venv, linked into
# the floor environment: the same build, not a second one.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR=$(sed -n 's/.*"transformers>=\([0-9.]*\),<6".*/\1/p' pyproject.toml | head -n 1)
echo "== transformers floor: $FLOOR (from pyproject.toml)"

# -P: the current directory (the source tree, no compiled extension) stays off sys.path.
built=$(.ci-venv/bin/python -P -c "import os, vidllm_ext; print(os.path.dirname(vidllm_ext.__file__))")
rm -rf .ci-venv-floor .ci-floor-package
python3 -m venv .ci-venv-floor
.ci-venv-floor/bin/python -m pip install --quiet --upgrade pip
.ci-venv-floor/bin/python -m pip install --quiet torch==2.13.0
.ci-venv-floor/bin/python -m pip install --quiet "transformers==$FLOOR" pytest \
  pytest-benchmark av
mkdir .ci-floor-package
ln -s "$built" .ci-floor-package/vidllm_ext
site=$(.ci-venv-floor/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD/.ci-floor-package" >"$site/vidllm_ext_ci_build.pth"
.ci-venv-floor/bin/python -P -c "import transformers, vidllm_ext; print('transformers', transformers.__version__, 'vidllm_ext', vidllm_ext.__version__, vidllm_ext.__file__)"
cd tests && ../.ci-venv-floor/bin/python -m pytest -q -m transformers
