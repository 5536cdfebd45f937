"""JARVIS sample readers: counts, shapes, units, labels reaching the records, bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxmat import graph
from jaxmat.data import jarvis


def test_bandgap_set():
    atoms = jarvis.load_jarvis_bandgap()
    assert len(atoms) == 50
    gaps = np.array([a.info["target_bandgap"] for a in atoms])
    assert gaps.min() == 0.0 and np.isclose(gaps.max(), 6.149)  # eV, upstream range
    assert np.sum(gaps == 0.0) == 28
    a = next(a for a in atoms if a.info["jid"] == "JVASP-10")
    assert a.get_chemical_formula() == "Se2V" and a.pbc.all()
    np.testing.assert_allclose(a.cell.lengths()[2], 6.2208, atol=1e-4)  # Å, from the POSCAR
    rec = graph.atoms_to_record(a, 5.0)
    assert float(rec.targets["bandgap"]) == a.info["target_bandgap"]


def test_dos_set():
    atoms = jarvis.load_jarvis_dos()
    assert len(atoms) == 50
    dos = np.stack([a.info["target_dos"] for a in atoms])
    assert dos.shape == (50, jarvis.N_DOS) and (dos >= 0).all()
    assert {a.info["jid"] for a in atoms} == {a.info["jid"] for a in jarvis.load_jarvis_bandgap()}
    b = graph.batch([graph.atoms_to_record(a, 4.0) for a in atoms[:2]])
    np.testing.assert_allclose(b.globals["dos"][:2], dos[:2], rtol=1e-6)


def test_force_field_set_units():
    atoms = jarvis.load_jarvis_ff()
    assert len(atoms) == 50
    a = atoms[0]
    res = a.calc.results
    assert len(a) == 10 and a.info["jid"] == "15607"
    np.testing.assert_allclose(res["energy"], -29.31309578)  # eV per cell
    assert res["forces"].shape == (10, 3)
    # stress: 3x3 kbar (positive = compressive) -> eV/Å³ with ASE's sign
    np.testing.assert_allclose(res["stress"][0, 0], -2.88305236 * 6.241509074e-4, rtol=1e-9)
    rec = graph.atoms_to_record(a, 5.0)
    assert rec.targets["stress"].shape == (3, 3) and rec.node_targets["forces"].shape == (10, 3)


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        jarvis.read_id_prop(str(tmp_path), "x")
    (tmp_path / "id_prop.csv").write_text("POSCAR-missing.vasp,1.0\n")
    with pytest.raises(FileNotFoundError, match="POSCAR-missing"):
        jarvis.read_id_prop(str(tmp_path), "x")
    (tmp_path / "id_prop.csv").write_text("POSCAR-a.vasp,1.0,2.0\n")
    with pytest.raises(ValueError, match="expected 3 values"):
        jarvis.read_id_prop(str(tmp_path), "x", n_values=3)
    (tmp_path / "id_prop.csv").write_text("POSCAR-a.vasp,nan\n")
    with pytest.raises(ValueError, match="non-finite"):
        jarvis.read_id_prop(str(tmp_path), "x")
    assert os.listdir(tmp_path) == ["id_prop.csv"]
