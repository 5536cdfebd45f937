"""Adversarial attacks: objective vs finite differences, batching, neighbour-list rebuilds,
variance increase on a trained toy committee, input errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase import Atoms

from jaxmat import attack, ensemble, graph, potential, train
from jaxmat.core import neighbors
from jaxmat.data import labelled_atoms, load_ammonia
from jaxmat.models import SchNetConfig, schnet
from jaxmat.models.coordinate import coordinate_mlp
from jaxmat.workflows.adversarial.oracle import double_well

CUTOFF = 4.0


@pytest.fixture(scope="module")
def committee():
    """A random 3-member tiny SchNet committee (one Model object, so compiles are shared)."""
    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=CUTOFF, scale=0.5)), stress=False)
    recs = graph.records_from_atoms(load_ammonia()[:2], CUTOFF)
    params = ensemble.init(model, jax.random.key(0), graph.batch(recs), 3)
    return model, params


def test_boltzmann_reference():
    e = np.array([1.0, 1.5, 3.0])
    ref = attack.Boltzmann.from_energies(e, kT=0.5)
    assert ref.e_min == 1.0
    assert np.exp(ref.log_z) == pytest.approx(np.mean(np.exp(-(e - 1.0) / 0.5)), rel=1e-12)
    w = np.exp(ref.log_weight(jnp.asarray(e), jnp.ones(3)))
    assert np.mean(w) == pytest.approx(1.0, rel=1e-6)  # mean over the training set is 1
    per = attack.Boltzmann.from_energies(e, kT=0.5, n_atoms=[1, 3, 3], per_atom=True)
    assert per.e_min == pytest.approx(0.5)
    assert float(per.log_weight(jnp.asarray(1.5), jnp.asarray(3.0))) == pytest.approx(-per.log_z)


def test_objective_gradient_matches_finite_differences(committee):
    with jax.enable_x64(True):
        model, params = committee
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), params)
        atoms = load_ammonia()[:2]
        recs = graph.records_from_atoms(atoms, CUTOFF)
        b = graph.to_device(graph.batch(recs, dtype=np.float64))
        for per_atom in (False, True):
            ref = attack.Boltzmann.from_structures(atoms, kT=0.05, per_atom=per_atom)
            rng = np.random.default_rng(1)
            delta = jnp.asarray(rng.normal(0, 0.05, b.nodes["positions"].shape))

            @jax.jit
            def total(d):
                return jnp.sum(attack.objective(model, params, b, ref, d))

            g = np.asarray(jax.jit(jax.grad(total))(delta))
            assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
            h = 1e-5
            for i, k in [(0, 2), (1, 0), (3, 1), (5, 2), (6, 0)]:
                e = np.zeros(delta.shape)
                e[i, k] = h
                fd = (float(total(delta + e)) - float(total(delta - e))) / (2 * h)
                assert g[i, k] == pytest.approx(fd, rel=1e-5, abs=1e-9 * np.abs(g).max())
            assert np.all(g[-1] == 0)  # the padding node does not move


def test_objective_terms_match_committee_statistics(committee):
    model, params = committee
    atoms = load_ammonia()[:3]
    recs = graph.records_from_atoms(atoms, CUTOFF)
    b = graph.to_device(graph.batch(recs))
    ref = attack.Boltzmann.from_structures(atoms, kT=0.1)
    t = jax.jit(attack.committee_terms, static_argnums=0)(model, params, b, ref.kT, ref.e_min,
                                                           ref.log_z)
    out = jax.jit(ensemble.apply, static_argnums=0)(model, params, b)
    f = np.asarray(out["forces"])[:, :12].reshape(3, 3, 4, 3)  # members, graphs, atoms, xyz
    fvar = f.var(axis=0).mean(axis=(1, 2))
    e = np.asarray(out["energy"])[:, :3].mean(0)
    expect = fvar * np.exp(-(e - ref.e_min) / ref.kT - ref.log_z)
    np.testing.assert_allclose(np.asarray(t["forces_var_graph"])[:3], fvar, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(t["objective"])[:3], expect, rtol=1e-3)
    assert float(t["objective"][3]) == 0.0  # padding graph


def test_batched_starts_are_attacked_independently(committee):
    model, params = committee
    atoms = load_ammonia()[:3]
    ref = attack.Boltzmann.from_structures(atoms, kT=0.5)
    cfg = attack.AttackConfig(n_steps=5, lr=0.01, sigma=0.0)
    together = attack.attack(model, params, atoms, ref, cfg)
    # the same start among other neighbours in the batch (same shapes: one compile)
    other = attack.attack(model, params, [atoms[2], atoms[2], atoms[1]], ref, cfg)
    np.testing.assert_allclose(together.delta[1], other.delta[2], atol=2e-6)
    np.testing.assert_allclose(together.delta[2], other.delta[0], atol=2e-6)
    assert together.objective[1] == pytest.approx(other.objective[2], rel=1e-4)
    assert together.history.shape == (5, 3) and together.n_rebuilds == 0
    assert np.abs(together.delta[0]).max() > 0.03  # Adam: ~lr per step
    for a, d, s in zip(together.atoms, together.delta, atoms):
        np.testing.assert_allclose(a.positions, s.positions + d, atol=1e-12)
        assert a.calc is None and a.info["attack_objective"] > 0


def test_graph_comes_from_the_model(committee):
    model, params = committee
    atoms = load_ammonia()[:2]
    ref = attack.Boltzmann.from_structures(atoms, kT=0.5)
    cfg = attack.AttackConfig(n_steps=2, sigma=0.0)
    same = attack.attack(model, params, atoms, ref, cfg, cutoff=CUTOFF)
    np.testing.assert_array_equal(same.objective, attack.attack(model, params, atoms, ref,
                                                                cfg).objective)
    with pytest.raises(ValueError, match="disagrees with the graph cutoff 4.0"):
        attack.attack(model, params, atoms, ref, cfg, cutoff=5.0)


@pytest.fixture(scope="module")
def copper():
    """A 2-member SchNet committee (cutoff 3 Å) and a rattled fcc Cu cell of 3.2 Å."""
    rng = np.random.default_rng(0)
    cell = np.eye(3) * 3.2
    pos = np.array([[0, 0, 0], [1.6, 1.6, 0], [1.6, 0, 1.6], [0, 1.6, 1.6]]) + rng.normal(0, 0.05, (4, 3))
    cu = [labelled_atoms([29] * 4, pos, energy=0.0, cell=cell, pbc=True)]
    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=3.0)), stress=False)
    rec = graph.records_from_atoms(cu, 3.0)
    params = ensemble.init(model, jax.random.key(1), graph.batch(rec), 2)
    return model, params, cu, attack.Boltzmann.from_structures(cu, kT=1.0)


def test_periodic_neighbour_list_is_rebuilt_between_steps(copper):
    model, params, cu, ref = copper
    small = attack.attack(model, params, cu, ref,
                          attack.AttackConfig(n_steps=8, lr=0.01, sigma=0.0, skin=0.05))
    big = attack.attack(model, params, cu, ref,
                        attack.AttackConfig(n_steps=8, lr=0.01, sigma=0.0, skin=1.5))
    assert small.n_rebuilds >= 2 and big.n_rebuilds == 0
    # a list rebuilt whenever an atom has moved skin/2 gives the same attack as a huge skin
    np.testing.assert_allclose(small.delta[0], big.delta[0], atol=1e-4)


def host_objective_and_gradient(model, params, atoms, ref):
    """Objective and its gradient (eV²/Å³) from a fresh host neighbour list."""
    b = graph.to_device(graph.batch(graph.records_from_atoms([atoms], 3.0)))
    total = lambda d: jnp.sum(attack.objective(model, params, b, ref, d))  # noqa: E731
    zero = jnp.zeros_like(b.nodes["positions"])
    return float(total(zero)), np.asarray(jax.grad(total)(zero))[:len(atoms)]


@pytest.mark.slow  # 70 s; rebuilds by default: test_periodic_neighbour_list_is_rebuilt_between_steps
def test_moves_beyond_the_skin_match_a_fresh_host_list(copper):
    """Steps that move atoms by more than the skin (rebuilt on the device within the scan)
    give the objective and gradient of a host list built at the new positions."""
    model, params, cu, ref = copper
    skin = 0.1
    cfg = attack.AttackConfig(sigma=0.0, skin=skin)
    one = lambda lr, n: attack.attack(model, params, cu, ref,  # noqa: E731
                                      dataclasses.replace(cfg, n_steps=n), optax.sgd(lr))
    lr = 0.4 / np.abs(one(1.0, 1).delta[0]).max()  # SGD: first step moves 0.4 Å
    first, second = one(lr, 1), one(lr, 2)
    assert np.linalg.norm(first.delta[0], axis=1).max() > 2 * skin and second.n_rebuilds >= 1
    moved = first.atoms[0].copy()
    obj, grad = host_objective_and_gradient(model, params, moved, ref)
    assert first.objective[0] == pytest.approx(obj, rel=1e-4)
    assert second.history[1, 0] == pytest.approx(obj, rel=1e-4)
    np.testing.assert_allclose((second.delta[0] - first.delta[0]) / lr, grad, rtol=1e-3,
                               atol=1e-4 * np.abs(grad).max())
    end_obj, _ = host_objective_and_gradient(model, params, second.atoms[0], ref)
    assert second.objective[0] == pytest.approx(end_obj, rel=1e-4)


def test_list_overflow_is_reallocated_and_redone(copper, monkeypatch):
    model, params, cu, ref = copper
    cfg = attack.AttackConfig(n_steps=6, lr=0.05, sigma=0.0, skin=0.1)
    want = attack.attack(model, params, cu, ref, cfg)
    real_plan, calls = neighbors.plan, []

    def tight(positions, *args, **kwargs):  # the first list holds only a quarter of the pairs
        spec = real_plan(positions, *args, **kwargs)
        if np.ndim(positions) == 2:  # plan's own per-replica calls
            return spec
        calls.append(spec)
        return spec if len(calls) > 1 else dataclasses.replace(spec, capacity=spec.capacity // 4)

    monkeypatch.setattr(neighbors, "plan", tight)
    got = attack.attack(model, params, cu, ref, cfg)
    assert len(calls) == 2 and calls[1].capacity > calls[0].capacity // 4
    np.testing.assert_allclose(got.delta[0], want.delta[0], atol=1e-5)
    np.testing.assert_allclose(got.history, want.history, rtol=1e-4)


def test_different_atoms_run_as_groups_in_input_order(committee):
    model, params = committee
    atoms = load_ammonia()[:3]
    flipped = atoms[1][[3, 2, 1, 0]]  # same elements, another order: another group
    ref = attack.Boltzmann.from_structures(atoms, kT=0.5)
    cfg = attack.AttackConfig(n_steps=3, lr=0.01, sigma=0.0)
    mixed = attack.attack(model, params, [atoms[0], flipped, atoms[2]], ref, cfg)
    same = attack.attack(model, params, [atoms[0], atoms[2]], ref, cfg)
    alone = attack.attack(model, params, [flipped], ref, cfg)
    assert mixed.history.shape == (3, 3) and mixed.atoms[1].info["start_index"] == 1
    np.testing.assert_array_equal(mixed.atoms[1].numbers, flipped.numbers)
    for k, (res, j) in zip([0, 1, 2], [(same, 0), (alone, 0), (same, 1)]):
        assert mixed.objective[k] == pytest.approx(res.objective[j], rel=1e-5)
        np.testing.assert_allclose(mixed.history[:, k], res.history[:, j], rtol=1e-5)
        np.testing.assert_allclose(mixed.delta[k], res.delta[j], atol=1e-6)


@pytest.fixture(scope="module")
def toy_committee():
    """A 4-member coordinate-MLP committee trained on the lower well of the double well."""
    orc = double_well()
    xs = np.linspace(-1.2, -0.82, 10)
    atoms = [orc.label(Atoms("H", [[x, 0, 0]])).attach(Atoms("H", [[x, 0, 0]])) for x in xs]
    recs = graph.records_from_atoms(atoms, 1.0)
    model = potential.potential(coordinate_mlp(features=(16, 16), shift=-5.0), stress=False)
    params = ensemble.init(model, jax.random.key(0), graph.batch(recs[:1]), 4)
    res = ensemble.fit(model, params, recs, loss=train.energy_force_loss(1.0, 1.0),
                       config=ensemble.CommitteeConfig(epochs=150, lr=1e-2, batch_size=16,
                                                       progress=False))
    return model, res.params, atoms


def test_attack_increases_committee_variance(toy_committee):
    model, params, atoms = toy_committee
    ref = attack.Boltzmann.from_structures(atoms, kT=2.0)
    res = attack.attack(model, params, atoms, ref,
                        attack.AttackConfig(n_steps=30, lr=0.05, sigma=0.02, axes=(0,)), cutoff=1.0)
    start = attack.attack(model, params, atoms, ref,
                          attack.AttackConfig(n_steps=0, sigma=0.02, axes=(0,)), cutoff=1.0)
    # every start climbs the objective; the committee disagrees far more at the end
    assert np.all(res.objective > res.objective_start)
    assert np.median(res.forces_var_graph / start.forces_var_graph) > 2.0
    np.testing.assert_allclose(start.objective, res.objective_start, rtol=1e-5)
    h = res.history
    assert np.all(h[-1] >= h[0])
    assert all(np.all(d[:, 1:] == 0) for d in res.delta)  # only x moves (axes=(0,))
    clamped = attack.attack(model, params, atoms, ref,
                            attack.AttackConfig(n_steps=30, lr=0.05, sigma=0.02, clamp=0.1,
                                                axes=(0,)), cutoff=1.0)
    assert max(np.abs(d).max() for d in clamped.delta) <= 0.1 + 1e-7


def test_bad_inputs_raise_clear_errors(toy_committee):
    model, params, atoms = toy_committee
    with pytest.raises(ValueError, match="kT"):
        attack.Boltzmann.from_structures(atoms, kT=0.0)
    with pytest.raises(ValueError, match="kT"):
        attack.Boltzmann.from_energies([1.0], kT=-1.0)
    with pytest.raises(ValueError, match="empty"):
        attack.Boltzmann.from_energies([], kT=1.0)
    with pytest.raises(ValueError, match="NaN"):
        attack.Boltzmann.from_energies([1.0, np.nan], kT=1.0)
    ref = attack.Boltzmann.from_structures(atoms, kT=1.0)
    with pytest.raises(ValueError, match="empty start set"):
        attack.attack(model, params, [], ref, cutoff=1.0)
    with pytest.raises(ValueError, match="mismatched species"):
        attack.attack(model, params, [Atoms("O", [[0, 0, 0]])], ref, cutoff=1.0)
    with pytest.raises(ValueError, match="cutoff must be a positive distance"):
        attack.attack(model, params, atoms, ref, cutoff=0.0)
    with pytest.raises(ValueError, match="declares no graph cutoff"):
        attack.attack(model, params, atoms, ref)
    with pytest.raises(ValueError, match="AttackConfig"):
        attack.attack(model, params, atoms, ref, 1.0)
    with pytest.raises(ValueError, match="no energy label"):
        attack.Boltzmann.from_structures([Atoms("H")], kT=1.0)
    with pytest.raises(ValueError, match="axes"):
        attack.AttackConfig(axes=(3,))
    with pytest.raises(ValueError, match="optimiser"):
        attack.AttackConfig(optimizer="nope")
