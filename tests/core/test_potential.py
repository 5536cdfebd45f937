"""Forces and stress from jax.grad: finite differences, symmetries, extensivity, padding (x64)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat import data, graph, potential
from jaxmat.models import SchNetConfig, schnet
from conftest import ammonia, si_cell

CUTOFF = 4.0  # Å, model cutoff
GRAPH_CUTOFF = 4.5  # Å; larger, so pairs entering/leaving the list under strain contribute 0
CFG = SchNetConfig(n_features=16, n_interactions=2, n_rbf=16, cutoff=CUTOFF)
ENERGY = schnet(CFG)
POT = potential.potential(ENERGY)


pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def params(x64):
    p = ENERGY.init(jax.random.key(0), None)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), p)


@pytest.fixture(scope="module")
def apply(x64):
    return jax.jit(POT.apply)


def batch_of(atoms_list, budget=None):
    recs = [graph.atoms_to_record(a, GRAPH_CUTOFF) for a in atoms_list]
    return graph.to_device(graph.batch(recs, budget, dtype=np.float64))


def run(apply, params, atoms_list, budget=None):
    out = apply(params, batch_of(atoms_list, budget))
    return {k: np.asarray(v) for k, v in out.items()}


BUDGET = graph.Budget(64, 640, 4)  # one shape for most tests: one compile


@jax.jit
def energy_at(params, b, pos):
    """Energy (eV) of graph 0 of ``b`` with positions replaced (fixed neighbour list)."""
    return ENERGY.apply(params, b._replace(nodes={**b.nodes, "positions": pos}))["energy"][0]


# --------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("make", [si_cell, ammonia])
def test_forces_match_central_differences(apply, params, make):
    atoms = make()
    b = batch_of([atoms], BUDGET)
    forces = np.asarray(apply(params, b)["forces"])[: len(atoms)]
    energy = lambda pos: energy_at(params, b, pos)  # noqa: E731
    pos0 = np.asarray(b.nodes["positions"])
    h = 1e-4
    rng = np.random.default_rng(1)
    atoms_to_check = rng.choice(len(atoms), size=min(len(atoms), 6), replace=False)
    for a in atoms_to_check:
        for c in range(3):
            plus, minus = pos0.copy(), pos0.copy()
            plus[a, c] += h
            minus[a, c] -= h
            fd = -(float(energy(plus)) - float(energy(minus))) / (2 * h)
            assert abs(fd - forces[a, c]) < 1e-7 + 1e-6 * abs(fd), (a, c, fd, forces[a, c])
    assert np.abs(forces).max() > 1e-3  # not trivially zero


def test_stress_matches_finite_strain(apply, params):
    atoms = si_cell()
    out = run(apply, params, [atoms], BUDGET)
    stress = out["stress"][0]
    vol = atoms.get_volume()
    h = 1e-5

    def e_strained(eps):
        a = atoms.copy()
        a.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
        return run(apply, params, [a], BUDGET)["energy"][0]

    fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            eps = np.zeros((3, 3))
            eps[i, j] += h / 2
            eps[j, i] += h / 2
            fd[i, j] = (e_strained(eps) - e_strained(-eps)) / (2 * h * vol)
    np.testing.assert_allclose(stress, fd, atol=1e-8)
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    assert np.abs(stress).max() > 1e-5


def test_molecule_has_zero_stress(apply, params):
    out = run(apply, params, [ammonia()], BUDGET)
    assert np.all(out["stress"] == 0.0)


# --------------------------------------------------------------------------- symmetries
def test_supercell_is_extensive(apply, params):
    atoms = si_cell()
    big = atoms.repeat((2, 1, 1))
    assert len(big) == 32
    ref = run(apply, params, [atoms], BUDGET)
    out = run(apply, params, [big], BUDGET)
    n = len(atoms)
    np.testing.assert_allclose(out["energy"][0], 2 * ref["energy"][0], rtol=1e-10)
    np.testing.assert_allclose(out["forces"][:n], ref["forces"][:n], atol=1e-10)
    np.testing.assert_allclose(out["forces"][n:2 * n], ref["forces"][:n], atol=1e-10)
    np.testing.assert_allclose(out["stress"][0], ref["stress"][0], atol=1e-10)


# --------------------------------------------------------------------------- batching and padding
def test_same_energy_alone_in_batch_and_padded(apply, params):
    target = si_cell()
    others = [ammonia(), [a for a in data.load_mlearn("Li", "all") if len(a) == 2][0]]
    n = len(target)
    alone = run(apply, params, [target], BUDGET)
    in_batch = run(apply, params, [others[0], target, others[1]], BUDGET)
    padded = run(apply, params, [target], graph.Budget(128, 1024, 7))
    off = len(others[0])
    for out, start, g in ((in_batch, off, 1), (padded, 0, 0)):
        np.testing.assert_allclose(out["energy"][g], alone["energy"][0], rtol=1e-12)
        np.testing.assert_allclose(out["forces"][start:start + n], alone["forces"][:n], atol=1e-12)
        np.testing.assert_allclose(out["stress"][g], alone["stress"][0], atol=1e-12)
    # the other structures are unaffected by sharing the batch
    np.testing.assert_allclose(in_batch["energy"][0],
                               run(apply, params, [others[0]], BUDGET)["energy"][0], rtol=1e-12)


def test_padding_gets_exactly_zero(apply, params):
    b = batch_of([ammonia(), si_cell()], BUDGET)
    out = apply(params, b)
    pad_nodes = ~np.asarray(b.nodes["mask"])
    pad_graphs = ~np.asarray(b.globals["mask"])
    assert pad_nodes.sum() == 64 - 20 and pad_graphs.sum() == 2
    assert np.all(np.asarray(out["forces"])[pad_nodes] == 0.0)
    assert np.all(np.asarray(out["energy"])[pad_graphs] == 0.0)
    assert np.all(np.asarray(out["stress"])[pad_graphs] == 0.0)
    assert np.all(np.asarray(out["atomic_energies"])[pad_nodes] == 0.0)
    assert np.isfinite(np.asarray(out["forces"])).all()


# --------------------------------------------------------------------------- reference energies
def test_fit_energy_stats_recovers_planted_references():
    rng = np.random.default_rng(0)
    planted = {1: -13.6, 6: -1030.2, 8: -2041.7, 14: -107.3}
    numbers, energies = [], []
    for _ in range(60):
        z = rng.choice(list(planted), size=rng.integers(2, 12))
        numbers.append(z)
        energies.append(sum(planted[int(x)] for x in z) + rng.normal(scale=0.01) * len(z))
    refs, scale = potential.fit_energy_stats(numbers, energies)
    assert refs.shape == (119,)
    for z, e in planted.items():
        assert abs(refs[z] - e) < 0.02
    assert np.all(refs[[k for k in range(119) if k not in planted]] == 0.0)
    assert 0.003 < scale < 0.03  # ~ the planted per-atom noise (0.01 eV/atom)
    with pytest.raises(ValueError, match="empty"):
        potential.fit_energy_stats([], [])


def test_energy_stats_is_the_one_scale_convention():
    """References reproduce energies linear in composition exactly; the scale is the
    training force RMS when forces exist, else the per-atom residual spread."""
    rng = np.random.default_rng(0)
    refs_true = {1: -13.6, 8: -432.0}
    recs = []
    for n_h, n_o in [(2, 1), (1, 1), (4, 2), (0, 2), (2, 2)]:
        z = [1] * n_h + [8] * n_o
        pos = np.arange(len(z))[:, None] * np.array([[1.2, 0.0, 0.0]])
        e = n_h * refs_true[1] + n_o * refs_true[8]
        f = rng.normal(scale=0.7, size=(len(z), 3))
        recs.append(graph.make_record(z, pos, 3.0, targets={"energy": e},
                                      node_targets={"forces": f}))
    refs, scale = potential.energy_stats(recs)
    assert refs[1] == pytest.approx(-13.6) and refs[8] == pytest.approx(-432.0)
    f_all = np.concatenate([r.node_targets["forces"] for r in recs])
    assert scale == pytest.approx(float(np.sqrt(np.mean(f_all**2))))
    no_forces = [dataclasses.replace(r, node_targets={}) for r in recs]
    assert potential.energy_stats(no_forces)[1] == pytest.approx(1e-3)  # exact fit: floor
    with pytest.raises(ValueError, match="no 'energy' label"):
        potential.energy_stats([dataclasses.replace(recs[0], targets={})])
