"""The failure detector's physics criteria (energy range, covalent topology, calibrated σ),
their data from the bundle (warnings when missing, one-line errors for bad input),
degrees of freedom with the centre of mass held and fixed atoms, the failure report, and
the oracle audit (label, replay, agreement)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.constraints import FixAtoms

import jaxmat.md as md
from jaxmat.core import graph, neighbors, potential
from jaxmat.md import audit, failure
from jaxmat.md.integrators import edge_lengths
from jaxmat.models.pair import morse


def pot(cutoff: float = 5.0):
    """A weak Morse pair potential (atoms nearly free: MD only moves them thermally)."""
    m = potential.potential(morse(D=1e-3, a=1.5, r0=1.3, cutoff=cutoff))
    return m, m.init(jax.random.key(0), graph.batch(graph.records([molecule("CH3CH2OH")], m, labels=False)))


def signature_changed(a: Atoms, b: Atoms) -> bool:
    crit = md.FailureCriteria()
    stack = lambda x: jax.tree_util.tree_map(lambda y: y[None], x)
    spec, nl0 = neighbors.allocate(a.positions, None, a.pbc, 3.0, 0.5)
    pos0 = jnp.asarray(a.positions[None], jnp.float32)
    cell = jnp.zeros((1, 3, 3), jnp.float32)
    nl0 = stack(nl0)
    det = failure.detector(crit, a.numbers, a.positions, np.zeros((3, 3)), a.pbc, nl0,
                           edge_lengths(pos0, cell, nl0), None, (1.0, 1.0), jnp.float32)
    _, nl1 = neighbors.allocate(b.positions, None, b.pbc, 3.0, 0.5)
    nl1 = stack(nl1)
    pos1 = jnp.asarray(b.positions[None], jnp.float32)
    return bool(failure.topology_changed(det, crit.bond_factor, nl1,
                                         edge_lengths(pos1, cell, nl1))[0])


def test_topology_sees_an_h_moving_into_the_ring_without_a_bond_stretching():
    eth = molecule("CH3CH2OH")
    rattled = eth.copy()
    rattled.rattle(0.05, seed=0)
    rot = eth.copy()
    rot.rotate(70, "z")
    assert not signature_changed(eth, rattled) and not signature_changed(eth, rot)
    # the hydroxyl H into the C-C-O triangle: its O-H stays 1.0 Å, it gains C partners
    z = eth.numbers
    o = int(np.flatnonzero(z == 8)[0])
    c = np.flatnonzero(z == 6)
    h = [i for i in np.flatnonzero(z == 1) if eth.get_distance(o, i) < 1.2][0]
    hole = eth.copy()
    centre = (eth.positions[o] + eth.positions[c].sum(0)) / 3
    hole.positions[h] = eth.positions[o] + 1.0 * (centre - eth.positions[o]) / np.linalg.norm(
        centre - eth.positions[o])
    assert hole.get_distance(o, h) == pytest.approx(1.0)
    assert signature_changed(eth, hole)
    # two H swapping places: same counts, other partners
    hs = [i for i in np.flatnonzero(z == 1) if i != h]
    a, b = hs[0], hs[-1]
    assert eth.get_distance(a, b) > 2.5
    swap = eth.copy()
    swap.positions[[a, b]] = eth.positions[[b, a]]
    assert signature_changed(eth, swap)


def test_energy_range_and_topology_stop_replicas_with_their_reasons():
    m, p = pot()
    eth = molecule("CH3CH2OH")
    e0 = float(md.simulate(m, p, eth, 1, ensemble="nve", init_temperature_K=0.0,
                           progress=False, log_every=1,
                           criteria=md.FailureCriteria(energy_margin=None)).log["energy"][0, 0])
    epa = e0 / len(eth)
    training = {"energy_per_atom_eV": [epa + 1.0, epa + 2.0]}  # every frame is a hole
    res = md.simulate(m, p, eth, 5, ensemble="nve", init_temperature_K=0.0, progress=False,
                      log_every=1, training=training)
    assert res.failed[0] and res.fail_step[0] == 0 and res.fail_code[0] == 6
    assert res.fail_reason[0] == "energy outside the training range"
    # the per-formula range wins over the global one; margins are eV/atom
    by_formula = {**training, "energy_per_atom_by_formula_eV": {"C2H6O": [epa + 0.02, epa + 1]}}
    for margin, fails in ((0.03, False), (0.01, True)):
        res = md.simulate(m, p, eth, 1, ensemble="nve", init_temperature_K=0.0,
                          progress=False, log_every=1, training=by_formula,
                          criteria=md.FailureCriteria(energy_margin=margin))
        assert res.failed[0] == fails
    # topology: the H already in the hole at the start changes the graph at once; with a
    # persistence time the replica fails after that many fs
    z = eth.numbers
    o = int(np.flatnonzero(z == 8)[0])
    h = [i for i in np.flatnonzero(z == 1) if eth.get_distance(o, i) < 1.2][0]
    ok = {"energy_per_atom_eV": [epa - 5, epa + 5]}
    start = eth.copy()
    crit = md.FailureCriteria(topology_time_fs=2.0, min_distance=None, bond_break=None)
    hole = eth.copy()
    hole.positions[h] = (eth.positions[o] + eth.positions[np.flatnonzero(z == 6)].sum(0)) / 3
    res = md.simulate(m, p, [start, hole], 20, ensemble="nvt", temperature_K=10,
                      timestep_fs=0.5, progress=False, log_every=1, criteria=crit,
                      training=ok)
    assert list(res.failed) == [False, True]
    assert res.fail_code[1] == 7 and res.fail_step[1] == 4  # changed for 4 x 0.5 fs = 2 fs
    assert res.log["topology_steps"][:4, 1].tolist() == [1, 2, 3, 4]
    # a reactive run switches topology off
    res = md.simulate(m, p, [start, hole], 20, ensemble="nvt", temperature_K=10,
                      progress=False, log_every=5, criteria=crit.without("topology"),
                      training=ok)
    assert not res.failed.any()
    rep = res.report()
    assert "topology" in rep["off"] and rep["replicas"][1]["status"] == "ok"


def test_missing_bundle_data_warns_and_bad_criteria_raise():
    m, p = pot()
    eth = molecule("CH3CH2OH")
    committee = jax.tree_util.tree_map(lambda x: jnp.stack([x, 1.01 * x]), p)
    with pytest.warns(UserWarning) as rec:
        res = md.simulate(m, committee, eth, 2, progress=False, log_every=1)
    text = " ".join(str(w.message) for w in rec)
    assert "no training energy range" in text and "energy_range is off" in text
    assert "no calibrated forces σ" in text and "force_sigma is off" in text
    assert {"energy_range", "force_sigma"} <= set(res.report()["off"])
    assert len(res.notes) == 2
    # a single model: σ criteria are off without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md.simulate(m, p, eth, 2, progress=False, log_every=1,
                    training={"energy_per_atom_eV": [-1e3, 1e3]})
    with pytest.raises(ValueError, match="unknown failure criteria.*'topolgy'"):
        md.FailureCriteria().without("topolgy")
    with pytest.raises(ValueError, match="energy_margin must be >= 0.*-0.1"):
        md.FailureCriteria(energy_margin=-0.1)
    with pytest.raises(ValueError, match="training energy range"):
        md.simulate(m, p, eth, 2, progress=False, training={"energy_per_atom_eV": [1.0, 0.0]})


def test_temperature_counts_3n_minus_3_and_fixed_atoms():
    m, p = pot()
    eth = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    v = rng.normal(0, 0.01, (len(eth), 3))
    masses = eth.get_masses()
    v -= (masses[:, None] * v).sum(0) / masses.sum()
    internal = 0.5 * np.sum(masses[:, None] * v**2)
    eth.set_velocities(v + [0.02, -0.01, 0.0])  # plus a drift of the whole molecule
    res = md.simulate(m, p, eth, 1, ensemble="nve", progress=False, log_every=1,
                      criteria=md.FailureCriteria(energy_margin=None))
    N = len(eth)
    assert res.dof == 3 * N - 3
    np.testing.assert_allclose(res.log["kinetic"][0, 0], internal, rtol=1e-5)
    np.testing.assert_allclose(res.log["temperature"][0, 0],
                               2 * internal / ((3 * N - 3) * units.kB), rtol=1e-5)
    # fixed atoms do not move and do not count
    fixed = molecule("CH3CH2OH")
    fixed.set_constraint(FixAtoms(indices=[0, 1]))
    res = md.simulate(m, p, fixed, 20, ensemble="nvt", temperature_K=300, progress=False,
                      log_every=10, criteria=md.FailureCriteria(energy_margin=None))
    assert res.dof == 3 * (N - 2)
    np.testing.assert_allclose(res.atoms[0].positions[:2], fixed.positions[:2], atol=1e-6)
    assert not np.allclose(res.atoms[0].positions[2:], fixed.positions[2:], atol=1e-3)
    # Langevin with the centre of mass held: it stays at rest
    res = md.simulate(m, p, molecule("CH3CH2OH"), 50, ensemble="nvt", temperature_K=300,
                      progress=False, log_every=50, criteria=md.FailureCriteria(
                          energy_margin=None))
    a = res.atoms[0]
    np.testing.assert_allclose((a.get_masses()[:, None] * a.get_velocities()).sum(0), 0,
                               atol=1e-4)


def test_audit_labels_replays_and_agrees():
    m, p = pot()
    eth = molecule("CH3CH2OH")
    res = md.simulate(m, p, eth, 40, ensemble="nvt", temperature_K=300, replicas=3,
                      progress=False, log_every=10, keep_frames=True,  # nearly free atoms:
                      criteria=md.FailureCriteria(energy_margin=None, topology_time_fs=None))
    assert res.frames["positions"].shape == (5, 3, len(eth), 3)
    from jaxmat.ase import JaxmatCalculator
    same = JaxmatCalculator(m, p)  # the model as its own oracle: every frame physical
    a = audit.audit(res, same, training=None)
    assert a["n_unphysical"] == 0 and a["false_alarms"] == 0 and a["false_alarm_rate"] == 0.0
    assert all(r["max_force_error"] < 1e-3 for r in a["replicas"])

    def shifted(atoms):  # forces off by 2 eV/Å once the molecule moved
        atoms = atoms.copy()
        atoms.calc = JaxmatCalculator(m, p)
        f = atoms.get_forces()
        moved = np.abs(atoms.positions - eth.positions).max() > 1e-6
        return atoms.get_potential_energy(), f + (2.0 if moved else 0.0)
    a = audit.audit(res, shifted, every=2)
    assert a["n_unphysical"] == 3 and a["recall"] == 0.0
    assert [r["unphysical_step"] for r in a["replicas"]] == [20, 20, 20]
    # agreement by hand: 2 unphysical (one caught 0.1 ps late), 2 physical (one stopped)
    g = audit.agreement(np.array([100, 200, -1, -1]), np.array([300, -1, 50, -1]), 0.5)
    assert (g["recall"], g["false_alarm_rate"], g["median_delay_ps"]) == (0.5, 0.5, 0.1)
    # replay of the log with thresholds reproduces an in-run stop
    lo = float(res.log["energy"].min(0).max() / len(eth))  # every replica dips below
    crit = md.FailureCriteria(energy_margin=0.0, topology_time_fs=None, max_forces_std=None)
    step, code = audit.replay(res.log, res.log_steps, len(eth), 0.5, crit, (lo + 1e-3, 1e9))
    run = md.simulate(m, p, eth, 40, ensemble="nvt", temperature_K=300, replicas=3,
                      progress=False, log_every=10, criteria=crit,
                      training={"energy_per_atom_eV": [lo + 1e-3, 1e9]})
    assert np.all(step >= 0) and set(code) == {6}
    assert np.all(run.fail_step <= step)  # in the run it fires at the step, replay at the log


def test_resolve_reads_power_maps_and_flags_single_scale_bundles():
    crit = md.FailureCriteria(max_energy_std=0.1)
    power = {"scale": 0.3, "power": 0.5, "knee": 0.2}
    _, _, maps, notes = failure.resolve(crit, "H2O", True, None,
                                        {"energy": power, "forces": power})
    assert maps == ((0.3, 0.5, 0.2), (0.3, 0.5, 0.2))
    assert not any("older bundle" in n for n in notes)
    _, _, maps, notes = failure.resolve(crit, "H2O", True, None,
                                        {"energy": {"scale": 2.0}, "forces": {"scale": 3.0}})
    assert maps[1] == (3.0, 1.0, np.inf)
    assert sum("one scale (an older bundle)" in n for n in notes) == 2
    with pytest.raises(ValueError, match="calibration of forces: .*power > 0"):
        failure.resolve(crit, "H2O", True, None, {"forces": {"scale": 1.0, "power": -1.0}})
