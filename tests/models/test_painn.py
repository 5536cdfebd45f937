"""PaiNN (x64): rotation invariance of energies, rotation equivariance of vector features
and forces, periodic supercell consistency, forces and stress vs finite differences,
padding invariance, and the protocol tools (committee) working unchanged."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxmat import attack, ensemble, graph, potential
from jaxmat.models import PaiNNConfig, painn
from conftest import ammonia as molecule, si_cell

CUTOFF = 4.0  # Å, model cutoff
GRAPH_CUTOFF = 4.5  # Å; larger, so pairs crossing the list under strain contribute 0
CFG = PaiNNConfig(n_features=16, n_interactions=2, n_rbf=8, cutoff=CUTOFF, return_features=True)
ENERGY = painn(CFG)
POT = potential.potential(ENERGY)


pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def params(x64):
    p = ENERGY.init(jax.random.key(1), None)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), p)


@pytest.fixture(scope="module")
def apply(x64):
    return jax.jit(POT.apply)


BUDGET = graph.Budget(64, 1280, 4)


def batch_of(atoms_list, budget=BUDGET):
    recs = [graph.atoms_to_record(a, GRAPH_CUTOFF) for a in atoms_list]
    return graph.to_device(graph.batch(recs, budget, dtype=np.float64))


def run(apply, params, atoms_list, budget=BUDGET):
    return {k: np.asarray(v) for k, v in apply(params, batch_of(atoms_list, budget)).items()}


@pytest.mark.parametrize("make", [si_cell, molecule])
def test_rotation_invariance_and_equivariance(apply, params, make):
    atoms = make()
    R = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    if atoms.pbc.any():
        rot.cell = np.asarray(atoms.cell) @ R.T
    a, b = run(apply, params, [atoms]), run(apply, params, [rot])
    n = len(atoms)
    assert abs(a["energy"][0]) > 1e-3
    np.testing.assert_allclose(b["energy"][0], a["energy"][0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b["scalar_features"][:n], a["scalar_features"][:n], atol=1e-9)
    va = a["vector_features"][:n]
    assert np.abs(va).max() > 1e-3  # vectors are non-trivial
    np.testing.assert_allclose(b["vector_features"][:n], np.einsum("ij,njf->nif", R, va), atol=1e-9)
    assert np.abs(a["forces"][:n]).max() > 1e-4
    np.testing.assert_allclose(b["forces"][:n], a["forces"][:n] @ R.T, atol=1e-9)
    if atoms.pbc.any():
        np.testing.assert_allclose(b["stress"][0], R @ a["stress"][0] @ R.T, atol=1e-10)


def test_supercell_consistency(apply, params):
    atoms = si_cell()
    sc = atoms.repeat((2, 1, 1))
    a = run(apply, params, [atoms])
    b = run(apply, params, [sc])
    n = len(atoms)
    np.testing.assert_allclose(b["energy"][0], 2 * a["energy"][0], rtol=1e-10)
    np.testing.assert_allclose(b["forces"][:2 * n], np.tile(a["forces"][:n], (2, 1)), atol=1e-9)
    np.testing.assert_allclose(b["stress"][0], a["stress"][0], atol=1e-10)
    np.testing.assert_allclose(b["vector_features"][:2 * n],
                               np.tile(a["vector_features"][:n], (2, 1, 1)), atol=1e-9)


@pytest.mark.slow
def test_committee_calculator_and_attack_work_unchanged():
    """Committee, ASE calculator and attack on PaiNN (~1 min on 2 cores: nightly)."""
    b = graph.to_device(graph.batch([graph.atoms_to_record(si_cell(), GRAPH_CUTOFF)], BUDGET))
    pot = potential.potential(painn(n_features=8, n_interactions=1, n_rbf=4, cutoff=CUTOFF))
    params = ensemble.stack([pot.init(k, b) for k in jax.random.split(jax.random.key(0), 3)])
    out = jax.jit(lambda p, x: ensemble.apply(pot, p, x))(params, b)
    assert out["forces"].shape == (3,) + b.nodes["positions"].shape
    single = jax.jit(pot.apply)(ensemble.member(params, 1), b)
    np.testing.assert_allclose(out["energy"][1], single["energy"], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(out["stress"])))
    # ASE calculator: committee mean of the same potential
    from jaxmat.ase import JaxmatCalculator

    atoms = si_cell()
    atoms.calc = JaxmatCalculator(pot, params, dtype=np.float64)
    n = len(atoms)
    np.testing.assert_allclose(atoms.get_potential_energy(), np.mean(out["energy"][:, 0]), rtol=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), np.mean(out["forces"][:, :n], axis=0), atol=1e-5)
    # adversarial attack: gradient steps on the committee force variance
    ref = attack.Boltzmann.from_energies([float(np.mean(out["energy"][:, 0]))], kT=0.5)
    res = attack.attack(pot, params, [si_cell()], ref, attack.AttackConfig(n_steps=2))
    assert np.isfinite(res.objective).all() and res.history.shape == (2, 1)
