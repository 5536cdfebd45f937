"""Dataset readers: units, sizes, splits, labels; structure files; errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.stress import voigt_6_to_full_3x3_stress

from jaxmat import data, graph

KCAL_MOL_EV = 0.0433641  # eV per kcal/mol


# --------------------------------------------------------------------------- ammonia
def test_ammonia_units_and_labels():
    raw = np.load(data.data_path("ammonia", "ammonia.npz"))
    atoms = data.load_ammonia()
    assert len(atoms) == 138
    assert all(a.get_chemical_formula() == "H3N" and not a.pbc.any() for a in atoms)
    energies = np.array([a.get_potential_energy() for a in atoms])
    forces = np.array([a.get_forces() for a in atoms])
    np.testing.assert_allclose(energies, raw["E"] * KCAL_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(forces, raw["F"] * KCAL_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(forces, -raw["energy_grad"] * KCAL_MOL_EV, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose([a.positions for a in atoms], raw["R"])
    assert abs(energies.min()) < 0.05 and energies.max() > 0.5  # eV, minimum shifted to ~0
    assert [a.info["geom_id"] for a in atoms] == [int(g) for g in raw["geom_id"]]


# --------------------------------------------------------------------------- mlearn
def source_table() -> dict[str, tuple[int, int]]:
    """``element -> (unique, test)`` from the table in files/mlearn/SOURCE.md."""
    with open(data.data_path("mlearn", "SOURCE.md")) as f:
        rows = re.findall(r"^\|\s*([A-Z][a-z]?)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|$", f.read(), re.M)
    return {el: (int(u), int(t)) for el, u, t in rows}


def test_source_table_lists_every_element():
    assert set(source_table()) == set(data.MLEARN_ELEMENTS)


@pytest.mark.parametrize("element", data.MLEARN_ELEMENTS)
def test_mlearn_sizes_splits_and_labels(element):
    n_unique, n_test = source_table()[element]
    train, test = data.load_mlearn(element, "train"), data.load_mlearn(element, "test")
    every = data.load_mlearn(element, "all")
    assert len(every) == n_unique and len(test) == n_test and len(train) == n_unique - n_test
    assert [a.info["jid"] for a in every] == [a.info["jid"] for a in train + test]
    assert len({a.info["jid"] for a in every}) == n_unique
    assert all(a.info["split"] == "test" and "stress" not in a.calc.results for a in test)
    assert all(a.info["split"] == "train" and a.calc.results["stress"].shape == (6,) for a in train)
    # energies are per cell: the upstream per-atom value times the number of atoms
    with open(data.data_path("mlearn", f"{element}.json")) as f:
        raw = json.load(f)[:n_unique]
    for a, e in zip(every, raw):
        assert a.info["jid"] == e["jid"]
        assert a.get_potential_energy() == pytest.approx(e["total_energy"] * len(a), rel=1e-12)
        np.testing.assert_allclose(a.get_forces(), e["forces"])
        assert a.pbc.all() and len(a) == len(e["atoms"]["elements"])
    assert {s for a in every for s in a.get_chemical_symbols()} == {element}


def test_mlearn_stress_units_and_sign():
    """Uniaxially strained 2-atom Li cells: ΔE/V = ½(σ0 + σ):ε (trapezoid, eV/Å³, ASE sign)."""
    cells = [a for a in data.load_mlearn("Li", "train") if len(a) == 2]
    ref = next(a for a in cells if np.allclose(a.cell.cellpar()[3:], 90)
               and np.ptp(a.cell.cellpar()[:3]) < 1e-6)
    cell0 = np.asarray(ref.cell)
    s0 = voigt_6_to_full_3x3_stress(ref.calc.results["stress"])
    vol = ref.get_volume()
    checked = 0
    for a in cells:
        f = np.linalg.solve(cell0, np.asarray(a.cell))
        if a is ref or np.abs(f - np.diag(np.diag(f))).max() > 0:
            continue  # only pure normal strains
        eps = f - np.eye(3)
        s = voigt_6_to_full_3x3_stress(a.calc.results["stress"])
        de = (a.get_potential_energy() - ref.get_potential_energy()) / vol
        predicted = np.sum(0.5 * (s0 + s) * eps)
        assert predicted == pytest.approx(de, rel=0.1)
        checked += 1
    assert checked >= 6
    assert np.trace(s0) < 0  # compressed reference cell: positive pressure


def test_mlearn_bad_arguments():
    with pytest.raises(ValueError, match="unknown mlearn element"):
        data.load_mlearn("Xx")
    with pytest.raises(ValueError, match="split"):
        data.load_mlearn("Si", "validation")


# --------------------------------------------------------------------------- files
def test_read_structures_round_trips_extxyz(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for k in range(3):
        a = Atoms("CuNi", positions=[[0, 0, 0], [1.3, 1.2, 1.1 + 0.1 * k]],
                  cell=np.eye(3) * 3.6, pbc=True)
        a.calc = SinglePointCalculator(a, energy=-7.5 + k, forces=rng.normal(size=(2, 3)),
                                       stress=rng.normal(size=6) * 1e-3)
        frames.append(a)
    path = tmp_path / "frames.extxyz"
    write(path, frames, format="extxyz")
    back = data.read_structures(path)
    assert len(back) == 3
    for a, b in zip(frames, back):
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy())
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-8)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-10)
        np.testing.assert_allclose(b.positions, a.positions)
        np.testing.assert_allclose(np.asarray(b.cell), np.asarray(a.cell))
    one = data.read_structures(path, index=1)
    assert len(one) == 1 and one[0].get_potential_energy() == pytest.approx(-6.5)
    # and on into records with the labels attached
    rec = graph.atoms_to_record(back[2], 3.0)
    assert rec.targets["energy"] == pytest.approx(-5.5)
    np.testing.assert_allclose(rec.node_targets["forces"], frames[2].get_forces(), atol=1e-8)
    np.testing.assert_allclose(rec.targets["stress"],
                               voigt_6_to_full_3x3_stress(frames[2].get_stress()), atol=1e-10)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.read_structures(tmp_path / "nope.xyz")


def test_split_indices():
    parts = data.split_indices(10, (0.6, 0.2, 0.2), seed=1)
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    again = data.split_indices(10, (0.6, 0.2, 0.2), seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))
    with pytest.raises(ValueError, match="empty"):
        data.split_indices(0)


def test_read_structures_maps_label_keys(tmp_path):
    """extxyz files of other potential codes keep labels under REF_*/custom keys: the
    reader puts them on the calculator under ASE's names, or names what it found."""
    import ase
    import ase.io

    frames = []
    for k in range(3):
        a = ase.Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.4, 1.2]], cell=np.eye(3) * 5.4,
                      pbc=True)
        a.info["REF_energy"] = -10.0 - k
        s = np.arange(9, dtype=float).reshape(3, 3)
        a.info["REF_stress"] = ((s + s.T) * 0.01 * (k + 1)).ravel()  # symmetric, 9 values
        a.arrays["REF_forces"] = np.full((2, 3), 0.1 * k)
        a.info["dft_energy"] = 1.0 + k
        frames.append(a)
    path = tmp_path / "ref.xyz"
    ase.io.write(path, frames, format="extxyz")
    back = data.read_structures(path)
    assert [a.get_potential_energy() for a in back] == pytest.approx([-10.0, -11.0, -12.0])
    np.testing.assert_allclose(back[2].get_forces(), np.full((2, 3), 0.2))
    np.testing.assert_allclose(back[1].get_stress(voigt=False),
                               (s + s.T) * 0.02, atol=1e-12)
    chosen = data.read_structures(path, energy_key="dft_energy")
    assert chosen[1].get_potential_energy() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no energy label under the key 'energy_dft'.*REF_energy"):
        data.read_structures(path, energy_key="energy_dft")
