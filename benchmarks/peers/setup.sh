#!/usr/bin/env bash
# Optional peer environment for benchmarks/peers/schnet_peers.py (PyTorch CPU,
# PyTorch Geometric, SchNetPack). Never a dependency of jaxmat.
#   bash benchmarks/peers/setup.sh            -> ./.venv-peers (repo root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PY="${PY:-python3}"
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# 1. torch first, pinned: this version resolves to the CPU wheel here; an unpinned
#    torch pulls several GB of CUDA libraries.
"$PIP" install -q "torch==2.13.0"
CONSTRAINT="$(mktemp)"
echo "torch==2.13.0" > "$CONSTRAINT"
# 2. PyTorch Geometric (pure Python; radius_graph is not used, so no pyg-lib needed).
"$PIP" install -q -c "$CONSTRAINT" torch-geometric
# 3. SchNetPack 2.1.1 pins sympy<=1.12, which torch 2.13 cannot use: install its
#    runtime dependencies under the torch constraint, then schnetpack without deps.
"$PIP" install -q -c "$CONSTRAINT" "numpy>=2.0" "ase>=3.21" h5py pyyaml "hydra-core>=1.1" \
    "pytorch-lightning>=2.0" torchmetrics rich fasteners dirsync torch-ema "matscipy>=1.1" \
    tqdm progressbar2 scipy
"$PIP" install -q --no-deps "schnetpack==2.1.1"
rm -f "$CONSTRAINT"
"$VENV/bin/python" - <<'PY'
import torch, torch.utils.data.dataloader as dl, typing
if not hasattr(dl, "T_co"):
    dl.T_co = typing.TypeVar("T_co", covariant=True)
import schnetpack, torch_geometric
print("peers ready: torch", torch.__version__, "| torch_geometric", torch_geometric.__version__,
      "| schnetpack", schnetpack.__version__)
PY
