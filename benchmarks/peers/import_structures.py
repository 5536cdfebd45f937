"""The structures of the MACE import fixtures (mace-torch and mlip): a distorted ethanol, a
distorted formaldehyde and a periodic 8-atom C2O2H4 cell (ASE and numpy only), and the
reference file a source library's ASE calculator writes on them."""
from __future__ import annotations

import json

import numpy as np
from ase import Atoms
from ase.build import molecule


def structures() -> list[Atoms]:
    rng = np.random.default_rng(0)
    eth = molecule("CH3CH2OH")
    eth.positions += rng.normal(scale=0.05, size=eth.positions.shape)
    form = molecule("H2CO")
    form.positions += rng.normal(scale=0.05, size=form.positions.shape)
    # a periodic cell: 8 atoms in a 4.2 Å box, no pair closer than 1.0 Å
    L, pos = 4.2, []
    while len(pos) < 8:
        p = rng.uniform(0, L, 3)
        d = [np.linalg.norm((p - q) - L * np.round((p - q) / L)) for q in pos]
        if all(x > 1.0 for x in d):
            pos.append(p)
    cell = Atoms("C2O2H4", positions=pos, cell=[[L, 0, 0], [0.3, L, 0], [0, -0.2, L]], pbc=True)
    return [eth, form, cell]


def write_references(path: str, calc_of, spec: dict, stress: bool) -> None:
    """Energies (eV), forces (eV/Å) and, with ``stress``, stresses (eV/Å³, ASE's sign and
    Voigt order) of ``calc_of(atoms)`` (an ASE calculator) on :func:`structures`, as JSON."""
    ref = {"spec": spec, "structures": []}
    for atoms in structures():
        atoms = atoms.copy()
        atoms.calc = calc_of(atoms)
        row = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
               "cell": np.asarray(atoms.cell).tolist(), "pbc": atoms.pbc.tolist(),
               "energy": float(atoms.get_potential_energy()),
               "forces": atoms.get_forces().tolist()}
        if stress and atoms.pbc.all():
            row["stress_voigt"] = atoms.get_stress().tolist()
        ref["structures"].append(row)
    with open(path, "w") as f:
        json.dump(ref, f, indent=1)
    print(path, [round(r["energy"], 6) for r in ref["structures"]])
