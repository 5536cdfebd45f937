"""JARVIS-DFT sample sets shipped with jaxmat (see ``files/jarvis/SOURCE.md``).

Every reader returns ASE ``Atoms`` (POSCAR files read with ``ase.io.read``) with the
labels attached: graph targets as ``atoms.info["target_<name>"]`` (read by
:func:`jaxmat.core.graph.atoms_to_record` as ``record.targets[<name>]``), energies/forces/
stress on a single-point calculator, and the JARVIS id as ``atoms.info["jid"]``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxmat.data import KBAR, data_path, jarvis_structure, labelled_atoms

N_DOS = 300  # points of the JARVIS electronic DOS grid


def _read_poscar(path: str):
    from ase.io import read

    if not os.path.exists(path):
        raise FileNotFoundError(f"structure file not found: {path}")
    return read(path, format="vasp")


def read_id_prop(directory: str, key: str, n_values: int | None = None) -> list:
    """POSCARs listed in ``<directory>/id_prop.csv`` (``file,value[,value...]`` rows) with
    the values as ``atoms.info["target_<key>"]`` (a float, or an array when a row has more
    than one value); ``n_values`` checks the row length."""
    csv = os.path.join(directory, "id_prop.csv")
    if not os.path.exists(csv):
        raise FileNotFoundError(f"id_prop.csv not found in {directory}")
    out = []
    with open(csv) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.strip().split(",")
            if not parts[0]:
                continue
            values = np.array([float(x) for x in parts[1:]])
            if len(values) == 0 or (n_values is not None and len(values) != n_values):
                raise ValueError(f"{csv}:{line_no}: expected {n_values or 'at least 1'} "
                                 f"values, got {len(values)}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{csv}:{line_no}: non-finite target value")
            atoms = _read_poscar(os.path.join(directory, parts[0]))
            atoms.info["jid"] = parts[0].removeprefix("POSCAR-").removesuffix(".vasp")
            atoms.info[f"target_{key}"] = float(values[0]) if len(values) == 1 else values
            out.append(atoms)
    return out


def load_jarvis_bandgap() -> list:
    """50 JARVIS-DFT crystals with the OptB88vdW band gap (eV) as ``target_bandgap``."""
    return read_id_prop(data_path("jarvis", "sample_data"), "bandgap", 1)


def load_jarvis_dos() -> list:
    """50 JARVIS-DFT crystals with the 300-point electronic DOS (spin up, JARVIS energy
    grid, arbitrary units) as ``target_dos`` (300,)."""
    return read_id_prop(data_path("jarvis", "sample_data_multi_prop"), "dos", N_DOS)


def load_jarvis_ff() -> list:
    """50 JARVIS-DFT snapshots with total energy (eV per cell), forces (eV/Å) and stress
    (eV/Å³, ASE sign convention; read as VASP kbar values, positive = compressive)."""
    path = data_path("jarvis", "sample_data_ff", "id_prop.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"JARVIS force-field sample not found: {path}")
    with open(path) as f:
        entries = json.load(f)
    out = []
    for e in entries:
        numbers, pos, lattice = jarvis_structure(e["atoms"])
        stress = -np.asarray(e["stresses"], dtype=np.float64) * KBAR
        out.append(labelled_atoms(numbers, pos, float(e["total_energy"]), e["forces"],
                                  stress, cell=lattice, pbc=True, info={"jid": e["jid"]}))
    return out
