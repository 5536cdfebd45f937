"""Shipped starting structures: alanine dipeptide (φ/ψ) and small host–guest zeolites."""
import itertools

import numpy as np
import pytest

from jaxmat.workflows.adversarial import systems


def test_alanine_dipeptide_backbone_dihedrals():
    a = systems.alanine_dipeptide()
    assert a.get_chemical_formula() == "C6H12N2O2" and not a.pbc.any()
    np.testing.assert_allclose(a.positions.mean(0), 0.0, atol=1e-9)
    d = a.get_all_distances()
    for quad in (systems.PHI, systems.PSI):  # each dihedral is a chain of covalent bonds
        assert all(d[i, j] < 1.6 for i, j in itertools.pairwise(quad))
    assert [a.get_chemical_symbols()[i] for i in systems.PHI] == ["C", "N", "C", "C"]
    assert [a.get_chemical_symbols()[i] for i in systems.PSI] == ["N", "C", "C", "N"]
    phi, psi = systems.phi_psi(a)
    # RDKit's dihedrals of the shipped PDB (read with its CONECT records)
    assert (phi, psi) == pytest.approx((117.504, -8.446), abs=1e-3)
    b = a.copy()
    b.set_dihedral(*systems.PHI, -60.0, indices=[2, 3, 4, 5] + list(range(14, 18)))
    assert systems.phi_psi(b)[0] == pytest.approx(-60.0, abs=1e-6)
    with pytest.raises(ValueError, match="not an alanine dipeptide"):
        systems.phi_psi(a[:20])


def test_zeolite_host_guest_cells():
    entries = systems.zeolite_entries()
    assert len(entries) == 12 and all(e["loading"] == 1 and e["n_atoms"] <= 40 for e in entries)
    z = systems.zeolite()
    assert z.get_chemical_formula() == "C2H7NO16Si8" and z.pbc.all()
    assert z.info["id"] == 84730342 and len(z.info["guest_atoms"]) == 10
    np.testing.assert_allclose(z.cell.lengths(), [7.161, 7.135, 8.310], atol=2e-3)
    assert z.get_all_distances(mic=True)[np.triu_indices(len(z), 1)].min() > 0.9
    assert systems.zeolite("SBN", "CN", 2).info["id"] == 87220809
    with pytest.raises(ValueError, match="no shipped zeolite with host 'MFI'"):
        systems.zeolite("MFI", "CNC")
    with pytest.raises(ValueError, match="index 3 out of range"):
        systems.zeolite("DFT", "CNC", 3)
