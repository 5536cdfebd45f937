"""Readers for shipped datasets and structure files; all return ASE ``Atoms`` with
labels attached (``atoms.calc.results``: energy eV, forces eV/Å, stress eV/Å³).
Composition + Raman tables live in :mod:`jaxmat.data.photoanode` (simulated library:
:mod:`jaxmat.data.photoanode_sim`); :class:`ArrayLoader` batches plain array dicts."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from jaxmat.data.loader import ArrayLoader  # noqa: F401
from jaxmat.data import photoanode  # noqa: F401  (composition + Raman tables)
from jaxmat.data.photoanode import (  # noqa: F401
    SpectraTable, Standardizer, normalize_spectra, read_photoanode_csv, read_table, write_table)

KCAL_MOL = 0.0433641043  # eV per kcal/mol (ase.units.kcal / ase.units.mol)
KBAR = 6.241509074e-4  # eV/Å³ per kbar

MLEARN_ELEMENTS = ("Cu", "Ge", "Li", "Mo", "Ni", "Si")
_MLEARN_SIZES = {  # unique entries, test entries (see files/mlearn/SOURCE.md)
    "Cu": (293, 31), "Ge": (253, 25), "Li": (270, 29),
    "Mo": (217, 23), "Ni": (294, 31), "Si": (239, 25),
}


def data_path(*parts: str) -> str:
    """Absolute path of a shipped data file."""
    return str(resources.files("jaxmat.data").joinpath("files", *parts))


def labelled_atoms(numbers, positions, energy=None, forces=None, stress=None,
                   cell=None, pbc=False, info: dict | None = None):
    """ASE ``Atoms`` with a single-point calculator holding the labels."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    res = {}
    if energy is not None:
        res["energy"] = float(energy)
    if forces is not None:
        res["forces"] = np.asarray(forces, dtype=np.float64)
    if stress is not None:
        res["stress"] = np.asarray(stress, dtype=np.float64)
    if res:
        atoms.calc = SinglePointCalculator(atoms, **res)
    atoms.info.update(info or {})
    return atoms


def load_ammonia() -> list:
    """138 NH3 geometries with DFT energies (eV, minimum ~0) and forces (eV/Å)."""
    z = np.load(data_path("ammonia", "ammonia.npz"))
    return [
        labelled_atoms(z["Z"][k], z["R"][k], z["E"][k] * KCAL_MOL, z["F"][k] * KCAL_MOL,
                       info={"geom_id": int(z["geom_id"][k])})
        for k in range(len(z["E"]))
    ]


def _vasp_kbar_to_ase(v: Sequence[float]) -> np.ndarray:
    xx, yy, zz, xy, yz, zx = v
    return -np.array([xx, yy, zz, yz, zx, xy]) * KBAR


def jarvis_structure(a: dict) -> tuple[list[int], np.ndarray, np.ndarray]:
    """``(atomic numbers, positions Å, lattice Å)`` of a JARVIS ``atoms`` record."""
    from ase.data import atomic_numbers

    lattice = np.asarray(a["lattice_mat"], dtype=np.float64)
    coords = np.asarray(a["coords"], dtype=np.float64)
    return ([atomic_numbers[s] for s in a["elements"]],
            coords if a.get("cartesian", False) else coords @ lattice, lattice)


def load_mlearn(element: str, split: str = "train") -> list:
    """mlearn data for one element; ``split`` is ``"train"``, ``"test"`` or ``"all"``.

    Energies are total energies per cell (eV); the published split is kept; test entries
    carry no stress (the upstream file pairs them with training stresses).
    """
    if element not in _MLEARN_SIZES:
        raise ValueError(f"unknown mlearn element {element!r}; choose from {MLEARN_ELEMENTS}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    n_unique, n_test = _MLEARN_SIZES[element]
    with open(data_path("mlearn", f"{element}.json")) as f:
        entries = json.load(f)[:n_unique]
    out = []
    for k, e in enumerate(entries):
        is_test = k >= n_unique - n_test
        if (split == "train" and is_test) or (split == "test" and not is_test):
            continue
        numbers, pos, lattice = jarvis_structure(e["atoms"])
        stress = None if is_test else _vasp_kbar_to_ase(e["stresses"])
        out.append(labelled_atoms(numbers, pos, float(e["total_energy"]) * len(numbers),
                                  e["forces"], stress, cell=lattice, pbc=True,
                                  info={"jid": e["jid"], "split": "test" if is_test else "train"}))
    return out


def read_structures(path: str | os.PathLike, index: Any = ":", energy_key: str | None = None,
                    forces_key: str | None = None, stress_key: str | None = None) -> list:
    """Any ASE-readable file (extxyz, ASE db, POSCAR, CIF, ...) -> list of ``Atoms`` whose
    labels sit on a single-point calculator under ASE's names (energy eV, forces eV/Å,
    stress eV/Å³).

    Labels are taken from the given ``*_key`` (a structure without it raises, naming the
    keys it has), else from the calculator or the first conventional key found
    (:data:`jaxmat.core.graph.LABEL_KEYS`: ``REF_energy``, ``dft_forces``, ...).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"structure file not found: {path}")
    from ase.io import read

    from jaxmat.core.graph import read_label

    out = read(path, index=index)
    out = out if isinstance(out, list) else [out]
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    for k, atoms in enumerate(out):
        name = f"{os.fspath(path)} structure {k}"
        labels = {kind: read_label(atoms, kind, key, name) for kind, key in keys.items()}
        if labels["stress"] is not None:
            from ase.stress import full_3x3_to_voigt_6_stress

            labels["stress"] = full_3x3_to_voigt_6_stress(labels["stress"])
        if any(v is not None for v in labels.values()):
            info = dict(atoms.info)
            out[k] = labelled_atoms(atoms.numbers, atoms.positions, labels["energy"],
                                    labels["forces"], labels["stress"], cell=atoms.cell,
                                    pbc=atoms.pbc, info=info)
            for name_, arr in atoms.arrays.items():
                if name_ not in out[k].arrays:
                    out[k].arrays[name_] = arr
    return out


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.2), seed: int = 0) -> list[np.ndarray]:
    """Random disjoint index sets with the given fractions (the last takes the rest)."""
    if n <= 0:
        raise ValueError("cannot split an empty dataset")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(perm, cuts)


def __getattr__(name: str) -> Any:
    if name == "photoanode_sim":  # imports JAX; loaded on first use
        import importlib

        return importlib.import_module("jaxmat.data.photoanode_sim")
    raise AttributeError(f"module 'jaxmat.data' has no attribute {name!r}")
