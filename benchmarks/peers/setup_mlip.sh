#!/usr/bin/env bash
# Optional mlip peer environment: InstaDeep's mlip (MACE in JAX) beside jaxmat, for the
# mlip import fixtures and the extract step of the MACE import (mace_mlip_extract.py). Never a
# dependency of jaxmat.
#   bash benchmarks/peers/setup_mlip.sh       -> ./.venv-mlip (repo root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MLIP_VENV:-$ROOT/.venv-mlip}"
PY="${PY:-python3}"
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "mlip==0.2.5" pytest
"$VENV/bin/pip" install -q -e "$ROOT[mace]"
"$VENV/bin/python" -c "import mlip, jax, jaxmat; print('mlip peers ready: mlip', mlip.__version__, '| jax', jax.__version__)"
