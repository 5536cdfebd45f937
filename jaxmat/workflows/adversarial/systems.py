"""Starting structures of the adversarial-sampling systems beyond NH3 (shipped in
``jaxmat/data/files/adversarial``, see its SOURCE.md): alanine dipeptide, a flexible
molecule whose conformers are told apart by the backbone dihedrals φ/ψ, and small-cell
pure-silica zeolites with one organic guest (periodic host–guest cells).
"""
from __future__ import annotations

import functools
import io
import json
from typing import Any

from ase import Atoms

# alanine dipeptide (Ace-Ala-NMe, the shipped atom order): backbone dihedrals, 0-based
# φ = C(Ace)–N–Cα–C, ψ = N–Cα–C–N(NMe)
PHI = (7, 6, 1, 2)
PSI = (6, 1, 2, 4)


def _path(name: str) -> str:
    from jaxmat.data import data_path

    return data_path("adversarial", name)


def alanine_dipeptide() -> Any:
    """The shipped alanine dipeptide (22 atoms, Å) as a molecule: no cell, no periodicity,
    centred at the origin."""
    from ase.io import read

    pdb = read(_path("alanine_dipeptide.pdb"), format="proteindatabank")
    pos = pdb.positions - pdb.positions.mean(axis=0)
    return Atoms(pdb.numbers, pos, info={"name": "alanine dipeptide"})


def phi_psi(atoms: Any) -> tuple[float, float]:
    """Backbone dihedrals (φ, ψ) of an alanine dipeptide in the shipped atom order, degrees
    in (−180, 180]."""
    if len(atoms) != 22 or [atoms.numbers[i] for i in PHI] != [6, 7, 6, 6]:
        raise ValueError(f"not an alanine dipeptide in the shipped atom order: "
                         f"{atoms.get_chemical_formula()} with φ atoms "
                         f"{[atoms.get_chemical_symbols()[i] for i in PHI] if len(atoms) > 7 else '?'}")

    def wrap(d: float) -> float:
        return float(d - 360.0 if d > 180.0 else d)

    return wrap(atoms.get_dihedral(*PHI)), wrap(atoms.get_dihedral(*PSI))


@functools.lru_cache(maxsize=1)
def _zeolite_entries() -> tuple[dict, ...]:
    with open(_path("zeolites_small.json")) as f:
        return tuple(json.load(f))


def zeolite_entries() -> list[dict]:
    """The shipped host–guest entries: ``id``, ``host`` (IZA code), ``guest`` (SMILES),
    ``loading``, ``n_atoms`` (no CIF text)."""
    return [{k: e[k] for k in ("id", "host", "guest", "loading")} | {"n_atoms": len(_cif(e))}
            for e in _zeolite_entries()]


def _cif(entry: dict) -> Any:
    from ase.io import read

    cif = read(io.StringIO(entry["cif"]), format="cif")
    return Atoms(cif.numbers, cif.positions, cell=cif.cell, pbc=True)


def zeolite(host: str = "DFT", guest: str = "CNC", index: int = 0) -> Any:
    """A periodic host–guest cell (Å): the ``index``-th shipped entry (by id) of framework
    ``host`` with organic ``guest`` (SMILES). Default: DFT with dimethylamine, 34 atoms.
    ``atoms.info`` holds ``id``, ``host``, ``guest`` and ``guest_atoms`` (indices of the
    guest: every C, N and H)."""
    hits = [e for e in _zeolite_entries() if e["host"] == host and e["guest"] == guest]
    if not hits:
        have = sorted({(e["host"], e["guest"]) for e in _zeolite_entries()})
        raise ValueError(f"no shipped zeolite with host {host!r} and guest {guest!r}; "
                         f"shipped: {have}")
    if not 0 <= index < len(hits):
        raise ValueError(f"{host}/{guest}: index {index} out of range ({len(hits)} entries)")
    entry = hits[index]
    atoms = _cif(entry)
    guest_atoms = [i for i, z in enumerate(atoms.numbers) if z in (1, 6, 7)]
    atoms.info = {"id": entry["id"], "host": host, "guest": guest, "guest_atoms": guest_atoms}
    return atoms
