"""Labels of a structure: energy (eV), forces (eV/Å), stress (eV/Å³) from an ASE calculator's
results or the common extxyz keys."""
from __future__ import annotations

from typing import Any

import numpy as np


def _formula(atoms: Any) -> str:
    """Chemical formula for messages; unknown atomic numbers or no atoms give "structure"."""
    try:
        return atoms.get_chemical_formula() or "structure"
    except (IndexError, KeyError):
        return "structure"


# label names tried in order when no key is given: ASE calculator results first, then the
# common extxyz conventions of potential-training codes (``atoms.info`` / ``atoms.arrays``)
LABEL_KEYS = {
    "energy": ("energy", "REF_energy", "dft_energy", "DFT_energy", "total_energy", "Energy"),
    "forces": ("forces", "REF_forces", "dft_forces", "DFT_forces", "force", "Forces"),
    "stress": ("stress", "REF_stress", "dft_stress", "DFT_stress", "Stress"),
}


def _label_sources(atoms: Any) -> list[tuple[str, dict]]:
    calc = getattr(atoms, "calc", None)
    res = getattr(calc, "results", None) or {}
    return [("calculator", dict(res)), ("info", atoms.info), ("arrays", atoms.arrays)]


def label_keys_found(atoms: Any) -> list[str]:
    """Every label-like key a structure carries (calculator results, info, arrays)."""
    skip = {"numbers", "positions"}
    return sorted({k for _, src in _label_sources(atoms) for k in src if k not in skip})


def read_label(atoms: Any, kind: str, key: str | None = None,
               name: str = "structure") -> np.ndarray | None:
    """The ``kind`` label (``energy`` eV, ``forces`` eV/Å, ``stress`` eV/Å³ as (3, 3)) of a
    structure, from ``key`` when given (``ValueError`` naming the keys found if absent), else
    from the first of :data:`LABEL_KEYS` present; None when none is."""
    if kind not in LABEL_KEYS:
        raise ValueError(f"unknown label kind {kind!r}; choose from {sorted(LABEL_KEYS)}")
    keys = (key,) if key else LABEL_KEYS[kind]
    for k in keys:
        for where, src in _label_sources(atoms):
            if where == "calculator" and k != kind:
                continue  # calculator results use ASE's own names only
            if k in src and src[k] is not None:
                return _as_label(kind, src[k], k, name)
    if key:
        raise ValueError(f"{name}: no {kind} label under the key {key!r}; keys found: "
                         f"{label_keys_found(atoms)}")
    return None


def _as_label(kind: str, value: Any, key: str, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if kind == "energy" and v.size != 1:
        raise ValueError(f"{name}: energy label {key!r} has shape {v.shape}, expected a scalar")
    if kind == "stress":
        from ase.stress import voigt_6_to_full_3x3_stress

        if v.shape == (6,):
            v = voigt_6_to_full_3x3_stress(v)
        elif v.shape == (9,):
            v = v.reshape(3, 3)
        if v.shape != (3, 3):
            raise ValueError(f"{name}: stress label {key!r} has shape {v.shape}, "
                             "expected 6 (Voigt), 9 or (3, 3)")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: non-finite values in the {kind} label {key!r}")
    return v.reshape(()) if kind == "energy" else v
