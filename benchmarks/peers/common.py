"""Shared benchmark data for the peer comparison (numpy only: imported by the jaxmat
worker and by the torch peers alike).

``molecules(n, seed)`` gives ``n`` distorted naphthalene molecules (C10H8, 18 atoms,
built from ideal bond lengths, random rotation and 0.05 Å Gaussian noise) labelled by a
harmonic pair potential: energies (eV) and forces (eV/Å). ``pairs`` is the cutoff
neighbour list (both directions, receiver ``i``, sender ``j``) that every model gets.
``load_periodic`` reads the periodic case (64-atom mlearn-Si cells) that the jaxmat worker
exports, with its edge list and integer shifts ``S``.
"""
from __future__ import annotations

import numpy as np

N_ATOMS = 18


def naphthalene() -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers (18,) and ideal positions (18, 3) Å: C-C 1.40 Å, C-H 1.09 Å."""
    cc, ch = 1.40, 1.09
    centers = np.array([[-cc * np.sqrt(3) / 2, 0.0], [cc * np.sqrt(3) / 2, 0.0]])
    ang = np.deg2rad(30 + 60 * np.arange(6))
    carbons: list[np.ndarray] = []
    for c in centers:
        for a in ang:
            p = c + cc * np.array([np.cos(a), np.sin(a)])
            if not any(np.linalg.norm(p - q) < 1e-6 for q in carbons):
                carbons.append(p)
    carbons_a = np.array(carbons)
    hydrogens = []
    for p in carbons_a:
        n_c = np.sum(np.linalg.norm(carbons_a - p, axis=1) < cc + 0.1) - 1
        if n_c == 2:  # C-H carbon: H points away from its ring centre
            c = centers[np.argmin(np.linalg.norm(centers - p, axis=1))]
            u = (p - c) / np.linalg.norm(p - c)
            hydrogens.append(p + ch * u)
    xy = np.concatenate([carbons_a, np.array(hydrogens)])
    pos = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
    z = np.array([6] * len(carbons_a) + [1] * len(hydrogens), dtype=np.int64)
    assert len(z) == N_ATOMS
    return z, pos


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def molecules(n: int = 128, seed: int = 0, noise: float = 0.05):
    """``(Z (n, 18), R (n, 18, 3) Å, E (n,) eV, F (n, 18, 3) eV/Å)``."""
    rng = np.random.default_rng(seed)
    z0, p0 = naphthalene()
    d0 = np.linalg.norm(p0[:, None] - p0[None], axis=-1)
    k = 1.0 / np.maximum(d0, 1.0) ** 2  # eV/Å², softer for distant pairs
    Z = np.tile(z0, (n, 1))
    R = np.empty((n, N_ATOMS, 3))
    E = np.empty(n)
    F = np.empty((n, N_ATOMS, 3))
    iu = np.triu_indices(N_ATOMS, 1)
    for m in range(n):
        pos = p0 @ _rotation(rng).T + rng.normal(scale=noise, size=p0.shape)
        diff = pos[:, None] - pos[None]  # R_i - R_j
        d = np.linalg.norm(diff, axis=-1)
        np.fill_diagonal(d, 1.0)
        x = np.where(np.eye(N_ATOMS, dtype=bool), 0.0, d - d0)
        E[m] = 0.5 * np.sum((k * x**2)[iu])
        g = (k * x / d)[..., None] * diff  # dE/dR_i from pair (i, j)
        F[m] = -g.sum(axis=1)
        R[m] = pos
    return Z, R, E, F


def pairs(R: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Directed neighbour pairs of one molecule: receivers ``i``, senders ``j`` (d < cutoff)."""
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    keep = (d < cutoff) & ~np.eye(len(R), dtype=bool)
    i, j = np.nonzero(keep)
    return i, j


def batched_pairs(R: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour pairs of a batch of molecules (n, a, 3), atom indices offset by ``m * a``."""
    out_i, out_j = [], []
    for m, pos in enumerate(R):
        i, j = pairs(pos, cutoff)
        out_i.append(i + m * R.shape[1])
        out_j.append(j + m * R.shape[1])
    return np.concatenate(out_i), np.concatenate(out_j)


def load_periodic(path: str) -> dict:
    """The periodic case written by ``jaxmat_worker.export``: ``Z`` (n, a), ``R`` (n, a, 3) Å,
    ``cell`` (n, 3, 3) Å, ``E`` (n,) eV, ``F`` (n, a, 3) eV/Å, directed edges ``i``
    (receivers), ``j`` (senders) over the concatenated atoms, and ``offsets`` (E, 3) Å, the
    Cartesian image shifts: the edge vector is ``R[j] - R[i] + offsets``."""
    d = dict(np.load(path))
    a = d["Z"].shape[1]
    d["offsets"] = np.einsum("ek,ekl->el", d["S"], d["cell"][d["i"] // a])
    return d
