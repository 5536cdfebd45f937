"""ASE calculator: forces/stress equal finite differences of its energy, committee statistics
match jaxmat.core.ensemble, MD compiles once, budgets grow only when needed."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from jaxmat import data, ensemble, graph, linegraph, potential
from jaxmat.ase import JaxmatCalculator
from jaxmat.models import ALIGNNConfig, SchNetConfig, alignn, schnet
from jaxmat.core.protocol import GraphSpec, Model

CUTOFF = 3.0


@pytest.fixture(scope="module")
def model():
    return potential.potential(schnet(SchNetConfig(n_features=16, n_interactions=2, n_rbf=8,
                                                   cutoff=CUTOFF)))


@pytest.fixture(scope="module")
def nh3():
    a = data.load_ammonia()[0]
    return Atoms(a.numbers, a.positions)


def _box(nh3, n=2, a=5.0):
    """n³ NH3 molecules on a grid in a periodic cubic box of side n·a/… (Å)."""
    mols = []
    for ix in range(n):
        for iy in range(n):
            for iz in range(n):
                m = nh3.copy()
                m.positions += np.array([ix, iy, iz]) * a / n + 0.3 * ix
                mols.append(m)
    out = mols[0]
    for m in mols[1:]:
        out += m
    out.cell = np.eye(3) * a
    out.pbc = True
    return out


@pytest.fixture(scope="module")
def params(model, nh3):
    rec = graph.make_record(nh3.numbers, nh3.positions, CUTOFF)
    return model.init(jax.random.key(0), graph.batch([rec]))


def _x64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)


def test_forces_and_stress_are_minus_energy_derivatives(model, params, nh3):
    with jax.enable_x64(True):
        atoms = _box(nh3, n=1, a=4.5)  # one molecule interacting with its images
        atoms.rattle(0.05, seed=1)
        atoms.calc = JaxmatCalculator(model, _x64(params), dtype=np.float64)
        forces = atoms.get_forces()
        stress = atoms.get_stress(voigt=False)
        h = 1e-4
        fd = np.zeros_like(forces)
        for i in range(len(atoms)):
            for k in range(3):
                e = []
                for sgn in (1, -1):
                    b = atoms.copy()
                    b.calc = atoms.calc
                    b.positions[i, k] += sgn * h
                    e.append(b.get_potential_energy())
                fd[i, k] = -(e[0] - e[1]) / (2 * h)
        np.testing.assert_allclose(forces, fd, atol=1e-7, rtol=1e-6)
        assert np.abs(forces).max() > 1e-3
        vol = atoms.get_volume()
        for a, b in ((0, 0), (1, 2)):
            e = []
            for sgn in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = sgn * h / (2 if a != b else 1)
                c = atoms.copy()
                c.calc = atoms.calc
                c.set_cell(atoms.cell @ (np.eye(3) + eps), scale_atoms=True)
                e.append(c.get_potential_energy())
            dE = (e[0] - e[1]) / (2 * h)
            np.testing.assert_allclose(stress[a, b], dE / vol, atol=1e-8, rtol=1e-5)
        assert atoms.calc.n_compiles == 1


def test_committee_results_match_ensemble(model, params, nh3):
    atoms = _box(nh3, n=1, a=4.5)
    rec = graph.make_record(atoms.numbers, atoms.positions, CUTOFF, atoms.cell, atoms.pbc)
    b = graph.batch([rec])
    com = ensemble.init(model, jax.random.key(1), b, 3)
    ref = ensemble.stats(jax.jit(lambda p, x: ensemble.apply(model, p, x))(com, b))
    calc = JaxmatCalculator(model, com, sigma_scale={"energy": 2.0, "forces": 3.0})
    atoms.calc = calc
    n = len(atoms)
    np.testing.assert_allclose(atoms.get_potential_energy(), ref["energy_mean"][0], rtol=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces_mean"][:n], rtol=1e-4, atol=1e-5)
    assert calc.committee
    np.testing.assert_allclose(calc.results["energy_std"], 2.0 * np.sqrt(ref["energy_var"][0]),
                               rtol=1e-4)
    np.testing.assert_allclose(calc.results["forces_std"], 3.0 * np.sqrt(ref["forces_var"][:n]),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(calc.results["forces_std_atom"],
                               3.0 * np.sqrt(ref["forces_var_atom"][:n]), rtol=1e-4, atol=1e-6)
    assert calc.results["energy_members"].shape == (3,)
    assert calc.get_property("energy_std", atoms) > 0
    # committee of one == the single model, with zero spread
    single = JaxmatCalculator(model, params)
    one = JaxmatCalculator(model, ensemble.stack([params]))
    e1 = single.get_potential_energy(atoms)
    assert not single.committee and "energy_std" not in single.results
    np.testing.assert_allclose(one.get_potential_energy(atoms), e1, rtol=1e-6)
    np.testing.assert_allclose(one.get_forces(atoms), single.get_forces(atoms), atol=1e-6)
    assert one.results["energy_std"] == 0.0


def test_md_100_steps_compiles_once(model, params, nh3):
    atoms = _box(nh3, n=2, a=6.0)  # 32 atoms, periodic
    # an untrained potential barely binds: molecules drift apart and the neighbour count
    # grows by ~40 % in 50 fs, so this run allocates 50 % head-room on edges
    calc = JaxmatCalculator(model, params, margin=1.5)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    edges = []
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(lambda: edges.append(len(graph.neighbor_list(
        atoms.positions, np.asarray(atoms.cell), atoms.pbc, CUTOFF)[0])), interval=1)
    e0 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    dyn.run(100)
    e1 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    assert len(edges) == 101
    assert len(set(edges)) > 1  # the neighbour list really changed during the run
    assert calc.n_compiles == 1 and calc.n_repads == 0
    assert max(edges) <= calc.budget.n_edge
    assert abs(e1 - e0) < 1e-3  # eV; velocity Verlet conserves the total energy


def test_budget_grows_only_when_outgrown(model, params, nh3):
    calc = JaxmatCalculator(model, params, margin=1.1)
    small = _box(nh3, n=1, a=6.0)
    dense = _box(nh3, n=2, a=4.0)
    calc.get_potential_energy(small)
    b0 = calc.budget
    calc.get_potential_energy(dense)
    assert calc.n_repads == 1 and calc.n_compiles == 2 and calc.budget.n_edge > b0.n_edge
    e_small = calc.get_potential_energy(small)  # fits the grown budget: no new compile
    assert calc.n_compiles == 2
    fresh = JaxmatCalculator(model, params)
    np.testing.assert_allclose(e_small, fresh.get_potential_energy(small), rtol=1e-5)


def test_drives_ase_optimizer(model, params, nh3):
    atoms = nh3.copy()
    atoms.calc = JaxmatCalculator(model, params)
    f0 = np.abs(atoms.get_forces()).max()
    e0 = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=1e-3 * f0 + 1e-4, steps=30)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.get_forces()).max() < 0.1 * f0
    assert atoms.calc.n_compiles == 1
    with pytest.raises(Exception, match="stress"):
        atoms.get_stress()  # no stress for a molecule


def test_bad_input(model, params, nh3):
    atoms = nh3.copy()
    bad = jax.tree_util.tree_map(lambda x: x * jnp.nan, params)
    with pytest.raises(ValueError, match="non-finite"):
        JaxmatCalculator(model, bad).get_potential_energy(atoms)
    leaves, tree = jax.tree_util.tree_flatten(ensemble.stack([params, params]))
    leaves[0] = leaves[0][:1]
    with pytest.raises(ValueError, match="leading member axis"):
        JaxmatCalculator(model, jax.tree_util.tree_unflatten(tree, leaves)
                         ).get_potential_energy(atoms)
    with pytest.raises(ValueError, match="cutoff"):
        JaxmatCalculator(model, params, cutoff=0.0)
    with pytest.raises(ValueError, match="sigma_scale"):
        JaxmatCalculator(model, params, sigma_scale=-1.0)
    energy_only = schnet(SchNetConfig(n_features=16, n_interactions=2, n_rbf=8, cutoff=CUTOFF))
    with pytest.raises(ValueError, match="potential"):
        JaxmatCalculator(energy_only, params).get_potential_energy(atoms)
    far = Atoms("NH", positions=[[0, 0, 0], [0, 0, 0.01]])
    with pytest.raises(ValueError, match="overlapping"):
        JaxmatCalculator(model, params).get_potential_energy(far)


def test_cutoff_comes_from_the_model(model, params, nh3):
    calc = JaxmatCalculator(model, params)
    assert calc.cutoff == model.graph.cutoff == CUTOFF
    same = JaxmatCalculator(model, params, cutoff=CUTOFF)
    np.testing.assert_allclose(same.get_potential_energy(nh3), calc.get_potential_energy(nh3))
    with pytest.raises(ValueError, match=r"cutoff 4.0 Å disagrees with the graph cutoff 3.0 Å"):
        JaxmatCalculator(model, params, cutoff=4.0)
    no_graph = jaxmat_model_without_cutoff(model)
    with pytest.raises(ValueError, match="declares no graph cutoff"):
        JaxmatCalculator(no_graph, params)
    given = JaxmatCalculator(no_graph, params, cutoff=CUTOFF)
    np.testing.assert_allclose(given.get_potential_energy(nh3), calc.get_potential_energy(nh3))


def jaxmat_model_without_cutoff(model):
    """``model`` declaring no graph cutoff (as a user's own model may)."""
    return Model(model.init, model.apply, None, "custom", GraphSpec(None))


def test_line_graph_and_knn_follow_the_model(nh3):
    """A k-NN line-graph model (ALIGNN-like) gets the graph it declares."""
    cfg = ALIGNNConfig(n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=8, n_bond_rbf=8,
                       n_angle_rbf=8, cutoff=4.0, max_neighbors=2, output_key="energy")
    pot = potential.potential(alignn(cfg), stress=False)
    rec = graph.make_record(nh3.numbers, nh3.positions, pot)
    b = graph.batch([rec])
    p = pot.init(jax.random.key(0), b)
    calc = JaxmatCalculator(pot, p)
    np.testing.assert_allclose(calc.get_potential_energy(nh3), pot.apply(p, b)["energy"][0],
                               rtol=1e-5)
    assert calc.budget.n_triplet >= rec.n_triplet > 0
