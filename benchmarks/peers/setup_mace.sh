#!/usr/bin/env bash
# Optional MACE peer environment: mace-torch (for the import fixtures and the extract step
# of the MACE import: mace_torch_extract.py) beside jaxmat. Never a dependency of jaxmat.
#   bash benchmarks/peers/setup_mace.sh       -> ./.venv-mace (repo root)
# e3nn 0.4.4 (mace-torch's pin) reads its constants with torch.load: run its scripts with
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (the fixture script and the test set it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MACE_VENV:-$ROOT/.venv-mace}"
PY="${PY:-python3}"
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
CONSTRAINT="$(mktemp)"
echo "torch==2.13.0" > "$CONSTRAINT"   # resolves to the CPU wheel here
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q -c "$CONSTRAINT" "mace-torch==0.3.16" pytest
"$PIP" install -q -c "$CONSTRAINT" -e "$ROOT[mace]"
rm -f "$CONSTRAINT"
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$VENV/bin/python" -c \
  "import torch, mace, jaxmat; print('mace peers ready: torch', torch.__version__, '| mace-torch', mace.__version__)"
