"""When an MD replica has left physical space: the failure detector.

A replica fails at the first step where any criterion holds; it is then frozen at its last
good state and its step and reason are reported. Codes (``REASONS``): 1 non-finite
positions, forces or energy; 2 two atoms closer than ``min_distance``; 3 a bond of the
starting structure stretched beyond ``bond_break`` times the sum of covalent radii;
4 committee force spread above ``max_forces_std``; 5 committee energy spread above
``max_energy_std``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii

from jaxmat.core import graph

REASONS = {0: "", 1: "non-finite values", 2: "atoms too close", 3: "bond broken",
           4: "committee force spread too large", 5: "committee energy spread too large"}


@dataclasses.dataclass(frozen=True)
class FailureCriteria:
    """Thresholds of the failure detector; ``None`` switches a criterion off.

    ``min_distance`` Å; ``bond_break`` (dimensionless, e.g. 1.6): bonds are the pairs of
    the starting structure closer than ``bond_factor`` × (sum of covalent radii);
    ``max_forces_std`` eV/Å (largest per-atom committee force std); ``max_energy_std`` eV."""

    min_distance: float | None = 0.5
    bond_break: float | None = None
    bond_factor: float = 1.2
    max_forces_std: float | None = None
    max_energy_std: float | None = None


def bonds(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
          factor: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Covalent bonds of a structure: ``(i, j, shifts, r_cov_sum)`` for pairs ``i < j``
    closer than ``factor`` × (sum of covalent radii, Å)."""
    rc = covalent_radii[np.asarray(numbers)]
    i, j, s, d = graph.neighbor_list(positions, cell, pbc, factor * 2 * rc.max())
    keep = (i < j) & (d < factor * (rc[i] + rc[j]))
    return i[keep], j[keep], s[keep], (rc[i] + rc[j])[keep]


def pair_lengths(positions: jax.Array, cell: jax.Array, i: jax.Array, j: jax.Array,
                 shifts: jax.Array) -> jax.Array:
    """Lengths (R, P) Å of pairs ``(i, j, shifts)`` in every replica (positions (R, N, 3))."""
    vec = positions[:, j] - positions[:, i] + jnp.einsum("pk,rkl->rpl", shifts, cell)
    return jnp.linalg.norm(vec, axis=-1)


def failure_codes(criteria: FailureCriteria, out: dict, positions: jax.Array, cell: jax.Array,
                  min_pair: jax.Array, bond_set: tuple | None) -> jax.Array:
    """(R,) int32 failure code of every replica (0 = fine); ``min_pair`` (R,) Å is the
    shortest interatomic distance, ``bond_set`` the device arrays of :func:`bonds`."""
    finite = (jnp.all(jnp.isfinite(positions), axis=(1, 2))
              & jnp.all(jnp.isfinite(out["forces"]), axis=(1, 2)) & jnp.isfinite(out["energy"]))
    checks = [~finite]
    checks.append(min_pair < criteria.min_distance if criteria.min_distance is not None
                  else jnp.zeros_like(finite))
    if criteria.bond_break is not None and bond_set is not None and bond_set[0].shape[0]:
        i, j, s, r0 = bond_set
        d = pair_lengths(positions, cell, i, j, s)
        checks.append(jnp.any(d > criteria.bond_break * r0, axis=-1))
    else:
        checks.append(jnp.zeros_like(finite))
    for key, limit in (("forces_std_max", criteria.max_forces_std),
                       ("energy_std", criteria.max_energy_std)):
        checks.append(out[key] > limit if limit is not None else jnp.zeros_like(finite))
    codes = jnp.zeros(finite.shape, jnp.int32)
    for code in range(len(checks), 0, -1):  # the lowest code wins
        codes = jnp.where(checks[code - 1], code, codes)
    return codes
