"""Structure validation: atomic numbers, positions (Å), cell (Å) and boundaries."""
from __future__ import annotations

from typing import Any

import numpy as np

MIN_DISTANCE = 0.1  # Å; closer atoms are rejected as overlapping
PAD_DISTANCE = 100.0  # Å; length of padding edges, beyond any cutoff
MAX_Z = 118



# --------------------------------------------------------------------------- validation
def validate_structure(
    numbers: Any, positions: Any, cell: Any = None, pbc: Any = False, name: str = "structure"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check and normalise one structure; raise ``ValueError`` naming the problem.

    Returns ``(numbers int32 (n,), positions float64 (n, 3) Å, cell (3, 3) Å, pbc (3,) bool)``.
    """
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, dtype=np.float64)
    if numbers.ndim != 1:
        raise ValueError(f"{name}: atomic numbers must be 1-D, got shape {numbers.shape}")
    if numbers.shape[0] == 0:
        raise ValueError(f"{name}: empty structure (no atoms)")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{name}: positions must have shape (n_atoms, 3), got {positions.shape}")
    if positions.shape[0] != numbers.shape[0]:
        raise ValueError(
            f"{name}: mismatched lengths: {numbers.shape[0]} atomic numbers but "
            f"{positions.shape[0]} positions"
        )
    if not np.issubdtype(numbers.dtype, np.integer):
        if not np.all(np.equal(np.mod(numbers, 1), 0)):
            raise ValueError(f"{name}: atomic numbers must be integers")
    numbers = numbers.astype(np.int32)
    bad = (numbers < 1) | (numbers > MAX_Z)
    if bad.any():
        raise ValueError(f"{name}: unknown element with atomic number {int(numbers[bad][0])}")
    if not np.all(np.isfinite(positions)):
        idx = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise ValueError(f"{name}: non-finite (NaN/inf) position for atom {idx}")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"{name}: cell must have shape (3, 3), got {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError(f"{name}: non-finite cell")
    if pbc.any():
        # only the periodic cell vectors must span a lattice; vectors along non-periodic
        # directions may be zero or arbitrary (slabs, wires)
        per = cell[pbc]
        norms = np.linalg.norm(per, axis=1)
        gram = abs(np.linalg.det(per @ per.T))  # squared volume spanned by the periodic vectors
        if norms.min() < 1e-12 or np.sqrt(gram) / np.prod(norms) < 1e-8:
            raise ValueError(f"{name}: singular cell (periodic cell vectors {per.tolist()} Å are "
                             "zero or linearly dependent) with periodic boundaries")
    return numbers, positions, cell, pbc
