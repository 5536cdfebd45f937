"""Normal-mode sampling: classical thermal displacements in the harmonic approximation of a
potential around a reference geometry (the ``normal_modes`` baseline of the active loop).

The Hessian is the central finite difference of the model's forces (committee mean), the
modes are those of the mass-weighted Hessian with the six (five for a linear molecule)
rigid-body modes removed, and a sample displaces every mode ``k`` by a Gaussian amplitude
of variance ``k_B T / ω_k²`` — the Boltzmann distribution of the harmonic model at
``temperature_K``. Soft and imaginary modes (the reference need not be a minimum) are held
at ``min_wavenumber`` cm⁻¹ so no amplitude diverges.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms, units

from jaxmat.core.predict import predict
from jaxmat.core.protocol import Model, Params

# angular frequency ω (rad per ASE time unit, so ω² is in eV/(Å² amu)) of 1 cm⁻¹: 2π c ν̃
_CM1_IN_OMEGA = 2 * np.pi * units._c * 100 / units.s


def hessian(model: Model, params: Params, atoms: Atoms, delta: float = 0.005) -> np.ndarray:
    """(3N, 3N) Hessian (eV/Å²) of the model energy (committee mean) at ``atoms`` by central
    differences of the forces, step ``delta`` Å, symmetrised."""
    n = len(atoms)
    displaced = []
    for k in range(3 * n):
        for sign in (1.0, -1.0):
            b = atoms.copy()
            b.calc = None
            b.positions[k // 3, k % 3] += sign * delta
            displaced.append(b)
    f = np.stack(predict(model, params, displaced, keys=("forces",))["forces"])
    f = f.reshape(3 * n, 2, 3 * n)
    h = -(f[:, 0] - f[:, 1]) / (2 * delta)
    if not np.all(np.isfinite(h)):
        raise ValueError(f"non-finite forces around {atoms.get_chemical_formula()}: no Hessian")
    return 0.5 * (h + h.T)


def modes(atoms: Atoms, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational modes of the Hessian ``h`` (eV/Å²): ``omega2`` (K,) in eV/(Å² amu) and
    mass-weighted unit vectors (K, 3N), rigid-body modes (translations, rotations) removed."""
    m = np.repeat(atoms.get_masses(), 3)
    hm = h / np.sqrt(np.outer(m, m))
    x = atoms.positions - atoms.get_center_of_mass()
    rigid = []
    for ax in np.eye(3):  # translations and infinitesimal rotations, mass-weighted
        rigid.append(np.tile(ax, len(atoms)) * np.sqrt(m))
        rigid.append(np.cross(ax, x).reshape(-1) * np.sqrt(m))
    u, sv, _ = np.linalg.svd(np.array(rigid).T, full_matrices=False)
    q = u[:, sv > 1e-6 * sv.max()]  # an orthonormal rigid-body basis: 6, a linear molecule 5
    p = np.eye(len(m)) - q @ q.T
    w2, v = np.linalg.eigh(p @ hm @ p)
    keep = np.argsort(np.abs(np.einsum("ik,ij,jk->k", v, q @ q.T, v)))[:len(m) - q.shape[1]]
    keep = np.sort(keep)
    return w2[keep], v[:, keep].T


def samples(atoms: Atoms, h: np.ndarray, temperature_K: float, n: int,
            rng: np.random.Generator, min_wavenumber: float = 100.0) -> list[Atoms]:
    """``n`` geometries drawn from the harmonic Boltzmann distribution at ``temperature_K`` K
    around ``atoms`` with Hessian ``h`` (eV/Å²); modes below ``min_wavenumber`` cm⁻¹
    (imaginary ones included) count as that soft."""
    if not temperature_K > 0 or n < 0:
        raise ValueError(f"need temperature_K > 0 and n >= 0, got {temperature_K}, {n}")
    w2, vec = modes(atoms, h)
    w2 = np.maximum(np.abs(w2), _omega2_of(min_wavenumber))
    kT = units.kB * temperature_K
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(atoms.get_masses(), 3))
    out = []
    for _ in range(n):
        c = rng.normal(size=len(w2)) * np.sqrt(kT / w2)
        b = atoms.copy()
        b.calc, b.info = None, {}
        b.positions = atoms.positions + (inv_sqrt_m * (c @ vec)).reshape(-1, 3)
        out.append(b)
    return out


def _omega2_of(wavenumber: float) -> float:
    """ω² in eV/(Å² amu) of a vibration of ``wavenumber`` cm⁻¹."""
    return float((wavenumber * _CM1_IN_OMEGA) ** 2)
