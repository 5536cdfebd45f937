"""XANES generator (transition-potential HF), molecule list, broadening, packing, resume."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("pyscf")
pytest.importorskip("rdkit")

from jaxmat.workflows.xanes import generate as gen  # noqa: E402
from jaxmat.workflows.xanes.broaden import Broadening, broaden, first_strong, grid  # noqa: E402
from jaxmat.workflows.xanes.molecules import build_list, canonical  # noqa: E402

FAST = gen.FAST


def _first_peak(res, k=0):
    e, f = gen.site_sticks(res, k)
    return first_strong(e, f)


@pytest.mark.slow
def test_carbonyl_pi_star_below_alcohol_first_peak():
    acetone = gen.compute_molecule("CC(C)=O", FAST)
    methanol = gen.compute_molecule("CO", FAST)
    assert list(acetone["site_element"]) == ["O"] and list(methanol["site_element"]) == ["O"]
    gap = _first_peak(methanol) - _first_peak(acetone)
    assert gap >= 2.0, gap  # experiment: 534.1 - 531.4 = 2.7 eV
    # the hole stays on the site; the carbonyl 1s -> pi* is the strongest low-lying line
    assert acetone["site_hole_population"][0] > 0.99
    e, f = gen.site_sticks(acetone, 0)
    assert f[0] == f[e < e[0] + 3].max()
    # the TP edge (Slater transition state) lies above the pi* line
    assert acetone["site_edge"][0] > e[0]


@pytest.mark.slow  # 73 s on 2 cores
def test_symmetry_equivalent_sites_agree():
    both = gen.compute_molecule("O=C=O", gen.Settings.from_dict(
        {**FAST.to_dict(), "elements": ["O"], "symmetry": False}))
    assert len(both["site_atoms"]) == 2
    (e0, f0), (e1, f1) = gen.site_sticks(both, 0), gen.site_sticks(both, 1)
    g = np.linspace(e0[0] - 3, e0[0] + 25, 400)
    s0 = broaden(e0, f0, g, both["site_edge"][0])
    s1 = broaden(e1, f1, g, both["site_edge"][1])
    assert abs(both["site_edge"][0] - both["site_edge"][1]) < 0.02
    assert np.abs(s0 - s1).max() < 0.02 * s0.max()
    once = gen.compute_molecule("O=C=O", FAST)
    assert len(once["site_atoms"]) == 1  # equivalent oxygens computed once
    assert once["classes"][0] == once["classes"][2]
    np.testing.assert_allclose(gen.site_sticks(once, 0)[0], e0, atol=1e-3)


def test_broadening_conserves_strength_and_widens_above_edge():
    g = np.linspace(500, 600, 20001)
    b = Broadening(0.5, 4.0, 10.0)
    below = broaden(np.array([520.0]), np.array([0.3]), g, edge=540.0, broadening=b)
    above = broaden(np.array([560.0]), np.array([0.3]), g, edge=540.0, broadening=b)
    dx = g[1] - g[0]
    assert below.sum() * dx == pytest.approx(0.3, rel=1e-4)
    assert above.sum() * dx == pytest.approx(0.3, rel=1e-4)
    half = lambda s: dx * (s >= s.max() / 2).sum()  # noqa: E731
    assert half(below) == pytest.approx(0.5, abs=0.01)
    assert half(above) == pytest.approx(4.0, abs=0.01)
    assert grid("O")[0] == 526.0 and grid("N")[-1] == 425.0
    with pytest.raises(ValueError):
        grid("C")
    with pytest.raises(ValueError):
        broaden(np.array([1.0, np.nan]), np.ones(2), g, 0.0)


def test_molecule_filter():
    assert canonical("OCC")[0] == canonical("CCO")[0] == "CCO"
    for bad in ("CC[O-]", "CCO.O", "CCCl", "CCCCCCCCCC", "[2H]OC", "C[CH2]"):
        assert canonical(bad) is None, bad
    recs = build_list([("1", "OCC"), ("2", "CCO"), ("3", "CC(C)=O"), ("4", "NCC=O"),
                       ("5", "[Na+].[Cl-]"), ("6", "C[C@@H](N)O"), ("7", "C[C@H](N)O")])
    # by heavy-atom count; within a count, molecules with both O and N first
    assert [r["smiles"] for r in recs] == ["CCO", "C[C@@H](N)O", "C[C@H](N)O", "NCC=O",
                                           "CC(C)=O"]
    assert recs[0]["pubchem_cid"] == "1" and recs[1]["mol_id"] == "mol00001"
    # the enantiomer is kept in the list but marked as a stereoisomer of the first one
    assert [r["stereo_of"] for r in recs] == ["", "", "mol00001", "", ""]


@pytest.mark.slow
def test_resume_skips_finished_and_records_failures(tmp_path):
    store = str(tmp_path / "store")
    mols = [{"mol_id": "m0", "smiles": "O", "n_O": 1, "n_N": 0},
            {"mol_id": "m1", "smiles": "N", "n_O": 0, "n_N": 1},
            {"mol_id": "m2", "smiles": "not a smiles", "n_O": 1, "n_N": 0},
            {"mol_id": "m3", "smiles": "CC", "n_O": 0, "n_N": 0},
            {"mol_id": "m4", "smiles": "O", "n_O": 1, "n_N": 0, "stereo_of": "m0"}]
    logs = []
    c1 = gen.run(mols, store, FAST, log=logs.append)
    assert c1["done"] == 2 and c1["failed"] == 1  # m3 has no absorber: not attempted
    done, failed = gen.store_status(store)
    assert done == {"m0", "m1"} and failed == {"m2"}
    with open(os.path.join(store, "m2.failed.json")) as fh:
        assert "SMILES" in json.load(fh)["error"]
    mtime = os.path.getmtime(os.path.join(store, "m0.npz"))
    c2 = gen.run(mols, store, FAST, log=logs.append)
    assert c2["done"] == 0 and c2["failed"] == 0 and c2["skipped"] == 3
    assert os.path.getmtime(os.path.join(store, "m0.npz")) == mtime
    with pytest.raises(ValueError, match="different settings"):
        gen.run(mols, store, gen.Settings(), log=logs.append)

    # pack -> shipped-format file -> graph records with per-site targets
    from jaxmat.data.xanes import load_xanes
    from jaxmat.workflows.xanes.pack import pack_store

    out = str(tmp_path / "x.npz")
    meta = pack_store(store, out)
    assert meta["n_molecules"] == 2 and meta["n_failed"] == 1
    with pytest.raises(FileExistsError):
        pack_store(store, out)
    data = load_xanes("O", "all", path=out, normalize=False)
    assert data.mol_id == ["m0"] and data.grid.shape == (261,)
    rec = data.records[0]
    np.testing.assert_allclose(rec.targets["xanes"], rec.node_targets["xanes_site"][0])
    assert rec.node_targets["xanes_absorber"].tolist() == [1.0, 0.0, 0.0]
    cal = meta["calibration"]["O"]
    assert cal["target"] == 531.4 and np.isfinite(cal["shift"])


def test_pack_copies_equivalent_sites(tmp_path):
    store = str(tmp_path / "store")
    gen.open_store(store, FAST)
    with open(os.path.join(store, "calibration.json"), "w") as fh:
        json.dump({"O": {"shift": -7.0, "edge_shift": -2.0}, "N": {"shift": -7.0,
                                                                   "edge_shift": -2.0}}, fh)
    res = gen.compute_molecule("O=C=O", FAST)
    np.savez(os.path.join(store, "co2.npz"), **res)
    from jaxmat.data.xanes import load_xanes
    from jaxmat.workflows.xanes.pack import pack_store

    pack_store(store, str(tmp_path / "x.npz"))
    with np.load(str(tmp_path / "x.npz")) as z:
        np.testing.assert_allclose(z["O_mol_spectrum"][0], z["O_site_spectrum"].mean(0))
        assert z["O_mol_index"].tolist() == [0] and z["O_site_atom"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="normalize"):  # a user's file is never rescaled silently
        load_xanes("O", "all", path=str(tmp_path / "x.npz"))
    data = load_xanes("O", "all", path=str(tmp_path / "x.npz"), normalize=True)
    assert data.meta["normalized_by"] == data.scale > 0
    rec = data.records[0]
    site = rec.node_targets["xanes_site"]
    assert rec.node_targets["xanes_absorber"].tolist() == [1.0, 0.0, 1.0]
    np.testing.assert_allclose(site[0], site[2])
    np.testing.assert_allclose(rec.targets["xanes"], site[0], rtol=1e-6)
