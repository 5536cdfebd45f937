"""MACE (x64): invariance of energies and equivariance of forces and stress under rotations
and reflections, permutation invariance, forces and stress vs finite differences, padding
independence, layout refusal, the missing-extra message, and the protocol tools (bundle,
committee, MD, attack) working unchanged."""
from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("cuequivariance_jax")

from jaxmat import attack, bundle, ensemble, graph, md, potential  # noqa: E402
from jaxmat.models import MACEConfig, mace  # noqa: E402
from conftest import ammonia as molecule, si_cell  # noqa: E402

CUTOFF = 4.0  # Å, model cutoff
GRAPH_CUTOFF = 4.5  # Å; larger, so pairs crossing the list under strain contribute 0
CFG = MACEConfig(n_channels=8, radial_features=16, radial_layers=2, readout_features=8,
                 cutoff=CUTOFF, avg_num_neighbors=10.0, max_z=14, scale=0.3,
                 atom_refs=(0.0, -0.5, 0, 0, 0, 0, 0, -1.0, 0, 0, 0, 0, 0, 0, -2.0))
ENERGY = mace(CFG)
POT = potential.potential(ENERGY)
BUDGET = graph.Budget(64, 1280, 4)

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def params(x64):
    p = ENERGY.init(jax.random.key(1), None)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), p)


@pytest.fixture(scope="module")
def apply(x64):
    return jax.jit(POT.apply)


def batch_of(atoms_list, budget=BUDGET):
    recs = [graph.atoms_to_record(a, GRAPH_CUTOFF) for a in atoms_list]
    return graph.to_device(graph.batch(recs, budget, dtype=np.float64))


def run(apply, params, atoms_list, budget=BUDGET):
    return {k: np.asarray(v) for k, v in apply(params, batch_of(atoms_list, budget)).items()}


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("make", [si_cell, molecule])
def test_rotation_and_reflection(apply, params, make, reflect):
    atoms = make()
    R = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
    if reflect:
        R = R @ np.diag([1.0, 1.0, -1.0])
    moved = atoms.copy()
    moved.positions = atoms.positions @ R.T
    if atoms.pbc.any():
        moved.cell = np.asarray(atoms.cell) @ R.T
    a, b = run(apply, params, [atoms]), run(apply, params, [moved])
    n = len(atoms)
    # energy beyond the element references: the network contributes
    refs = sum(CFG.atom_refs[z] for z in atoms.numbers)
    assert abs(a["energy"][0] - refs) > 1e-4
    np.testing.assert_allclose(b["energy"][0], a["energy"][0], rtol=1e-10, atol=1e-10)
    assert np.abs(a["forces"][:n]).max() > 1e-4
    np.testing.assert_allclose(b["forces"][:n], a["forces"][:n] @ R.T, atol=1e-9)
    if atoms.pbc.any():
        assert np.abs(a["stress"][0]).max() > 1e-6
        np.testing.assert_allclose(b["stress"][0], R @ a["stress"][0] @ R.T, atol=1e-10)


def test_permutation_invariance(apply, params):
    atoms = molecule()
    perm = np.random.default_rng(0).permutation(len(atoms))
    a, b = run(apply, params, [atoms]), run(apply, params, [atoms[perm]])
    np.testing.assert_allclose(b["energy"][0], a["energy"][0], rtol=1e-12)
    np.testing.assert_allclose(b["forces"][:len(atoms)], a["forces"][perm], atol=1e-12)


@jax.jit
def energy_at(params, b, pos, strain):
    """Energy (eV) of graph 0 with positions replaced and a homogeneous strain applied."""
    return ENERGY.apply(params, potential.strained(b, pos, strain))["energy"][0]


@pytest.mark.parametrize("make", [si_cell, molecule])
def test_forces_match_central_differences(apply, params, make):
    atoms = make()
    b = batch_of([atoms])
    forces = run(apply, params, [atoms])["forces"]
    pos0 = np.asarray(b.nodes["positions"])
    zero = jnp.zeros((graph.n_graphs(b), 3, 3))
    h = 1e-4
    rng = np.random.default_rng(2)
    for a in rng.choice(len(atoms), size=min(3, len(atoms)), replace=False):
        for x in range(3):
            dp = np.zeros_like(pos0)
            dp[a, x] = h
            fd = -(energy_at(params, b, pos0 + dp, zero) - energy_at(params, b, pos0 - dp, zero)) / (2 * h)
            np.testing.assert_allclose(forces[a, x], fd, atol=1e-8, rtol=1e-6)


def test_stress_matches_strain_differences(apply, params):
    atoms = si_cell()
    b = batch_of([atoms])
    stress = run(apply, params, [atoms])["stress"][0]
    pos0 = jnp.asarray(b.nodes["positions"])
    vol = abs(np.linalg.det(np.asarray(atoms.cell)))
    h = 1e-5
    for i, j in [(0, 0), (1, 2), (2, 1), (2, 2)]:
        eps = np.zeros((graph.n_graphs(b), 3, 3))
        eps[0, i, j] = h
        fd = (energy_at(params, b, pos0, eps) - energy_at(params, b, pos0, -eps)) / (2 * h) / vol
        np.testing.assert_allclose(stress[i, j], fd, atol=1e-9)


def test_padding_and_batch_neighbours_do_not_change_outputs(apply, params):
    si, nh3 = si_cell(), molecule()
    alone = run(apply, params, [si])
    both = run(apply, params, [nh3, si])  # other neighbours in the batch
    bigger = run(jax.jit(POT.apply), params, [si], graph.Budget(96, 2048, 6))  # more padding
    n = len(si)
    for other, start in ((both, len(nh3)), (bigger, 0)):
        g = 1 if other is both else 0
        np.testing.assert_allclose(other["energy"][g], alone["energy"][0], rtol=1e-12)
        np.testing.assert_allclose(other["forces"][start:start + n], alone["forces"][:n], atol=1e-12)
        np.testing.assert_allclose(other["stress"][g], alone["stress"][0], atol=1e-12)
        assert np.all(other["forces"][start + n:] == 0) and np.all(np.isfinite(other["forces"]))
    assert np.all(bigger["energy"][1:] == 0)


def test_dense_layout_is_refused(params):
    recs = [graph.atoms_to_record(molecule(), GRAPH_CUTOFF)]
    dense = graph.batch(recs, layout="dense")
    with pytest.raises(ValueError, match="sparse"):
        ENERGY.apply(params, dense)


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuequivariance_jax", None)
    with pytest.raises(ImportError, match=r"jaxmat\[mace\]"):
        mace(CFG)


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="hidden_l"):
        MACEConfig(l_max=1, hidden_l=2)
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        MACEConfig(avg_num_neighbors=0.0)


SMALL = dataclasses.replace(CFG, l_max=1, correlation=2)  # fewer paths: shorter compiles


def test_bundle_and_committee(tmp_path):
    """A 2-member committee bundle: the save/load round trip gives back a MACE whose vmapped
    committee equals its members run alone."""
    b = batch_of([si_cell()])
    small = potential.potential(mace(SMALL))
    com = ensemble.init(small, jax.random.key(3), None, n_members=2)
    loaded = bundle.load(bundle.save(tmp_path / "m", small, com))
    assert isinstance(bundle.innermost_config(loaded.model), MACEConfig) and loaded.n_members == 2
    out = jax.jit(lambda p, x: ensemble.apply(loaded.model, p, x))(loaded.params, b)
    one = jax.jit(small.apply)(ensemble.member(com, 1), b)
    np.testing.assert_allclose(out["energy"][1], one["energy"], rtol=1e-10)
    assert out["energy"][0, 0] != out["energy"][1, 0]


@pytest.mark.slow
def test_md_and_attack_on_a_committee():
    """A short float32 MD run and one attack step on a 2-member committee (compiles take
    minutes on a loaded 2-core machine: nightly)."""
    jax.config.update("jax_enable_x64", False)
    try:
        small = potential.potential(mace(SMALL))
        com = ensemble.init(small, jax.random.key(3), None, n_members=2)
        nh3 = molecule()
        res = md.simulate(small, com, nh3, 4, ensemble="nvt", timestep_fs=0.5,
                          temperature_K=300, log_every=2, progress=False)
        assert np.all(np.isfinite(res.atoms[0].positions)) and np.isfinite(res.log["energy"]).all()
        ref = attack.Boltzmann.from_energies([float(res.log["energy"][0, 0])], kT=0.5)
        adv = attack.attack(small, com, [nh3], ref, attack.AttackConfig(n_steps=1))
        assert np.isfinite(adv.objective).all() and adv.history.shape == (1, 1)
    finally:
        jax.config.update("jax_enable_x64", True)
