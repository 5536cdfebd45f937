"""On-device neighbour lists and jitted MD: lists equal the host list, overflow and
reallocation, NVE conservation, Langevin temperature, replicas = single runs, NPT response,
the failure detector and forces equal to the ASE calculator."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, fcc111, molecule

import jaxmat.md as md
from jaxmat.core import calibrate, graph, neighbors, potential
from jaxmat.core.protocol import GraphSpec, Model
from jaxmat.models.pair import morse

from conftest import TESTS, si_cell


def host_pairs(at: Atoms, rc: float) -> set:
    i, j, s, _ = graph.neighbor_list(at.positions, np.asarray(at.cell), at.pbc, rc)
    return {(int(a), int(b), *map(int, np.rint(c))) for a, b, c in zip(i, j, s)}


def argon(rep: int = 2) -> Atoms:
    return bulk("Ar", "fcc", a=5.3, cubic=True) * (rep, rep, rep)


def pot(**kw) -> tuple[Model, dict]:
    m = potential.potential(morse(**{"D": 0.012, "a": 1.3, "r0": 3.8, "cutoff": 6.0, **kw}))
    return m, m.init(jax.random.key(0), graph.batch(graph.records([argon()], m, labels=False)))


# --------------------------------------------------------------------------- device lists
def _cases() -> dict:
    si = bulk("Si", "diamond", a=5.43) * (3, 3, 3)
    si.set_cell(np.asarray(si.cell) + [[0, 0, 0], [1.1, 0, 0], [0.7, -0.4, 0]], scale_atoms=True)
    si.rattle(0.1, seed=1)
    far = si.copy()
    far.positions += np.random.default_rng(0).normal(0, 4, far.positions.shape)  # unwrapped
    small = Atoms("SiC", cell=[[2.0, 0, 0], [0.7, 1.9, 0], [0.4, 0.5, 2.2]], pbc=True,
                  scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.55, 0.7]])  # cutoff >> cell
    return {"triclinic": si, "unwrapped": far, "tiny_cell": small,
            "slab": fcc111("Al", (3, 3, 3), vacuum=5.0), "molecule": molecule("CH3CH2OH")}


@pytest.mark.parametrize("name", list(_cases()))
def test_device_list_equals_host_list(name):
    at = _cases()[name]
    rc, skin = 4.0, 0.5
    spec, nl = neighbors.allocate(at.positions, np.asarray(at.cell), at.pbc, rc, skin)
    assert not bool(nl.overflow)
    assert neighbors.pair_sets(nl) == host_pairs(at, rc + skin)  # the whole Verlet list
    assert neighbors.pair_sets(nl, rc, at.positions, np.asarray(at.cell)) == host_pairs(at, rc)


def test_overflow_flag_when_capacities_are_too_small():
    at = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3)
    pos, cell = jnp.asarray(at.positions, jnp.float32), jnp.asarray(np.asarray(at.cell), jnp.float32)
    spec, nl = neighbors.allocate(at.positions, np.asarray(at.cell), at.pbc, 5.0, 0.5)
    assert not bool(nl.overflow)
    fresh = nl._replace(overflow=jnp.zeros((), bool))
    for small in (dataclasses.replace(spec, capacity=spec.capacity // 2),
                  dataclasses.replace(spec, cell_capacity=2)):
        assert bool(neighbors.build(small, fresh, pos, cell).overflow)
    # a compressed cell no longer fits the grid's cells
    assert bool(neighbors.build(spec, fresh, 0.9 * pos, 0.9 * cell).overflow)
    # the skin decides when to rebuild
    assert not bool(neighbors.needs_rebuild(spec, nl, pos.at[:, 0].add(0.2), cell))
    assert bool(neighbors.needs_rebuild(spec, nl, pos.at[0, 0].add(0.3), cell))


@pytest.mark.slow  # overflow handling stays in the default set through test_attack
def test_driver_reallocates_after_overflow(monkeypatch):
    m, params = pot()
    at = argon()
    kw = dict(ensemble="nve", timestep_fs=4.0, temperature_K=40, seed=3, progress=False,
              log_every=10, chunk_steps=50)
    ref = md.simulate(m, params, at, 50, **kw)
    real_plan = neighbors.plan
    calls = []

    def tight(*args, **kwargs):  # the first plan is too small by half
        spec = real_plan(*args, **kwargs)
        calls.append(spec)
        return spec if len(calls) > 1 else dataclasses.replace(spec, capacity=spec.capacity // 2)

    monkeypatch.setattr(neighbors, "plan", tight)
    got = md.simulate(m, params, at, 50, **kw)
    assert got.n_reallocations == 1 and ref.n_reallocations == 0
    # same trajectory up to the float32 summation order of a differently sized list
    np.testing.assert_allclose(got.atoms[0].positions, ref.atoms[0].positions, atol=2e-3)


# --------------------------------------------------------------------------- integrators
@pytest.mark.slow  # 4 runs; NVE drift stays in the default set through test_cli_md
def test_nve_conserves_energy_and_replicas_equal_single_runs():
    m, params = pot()
    reps = []
    for k in range(3):
        a = argon()
        a.rattle(0.05, seed=k)
        a.set_velocities(np.random.default_rng(k).normal(0, 0.01, (len(a), 3)))
        reps.append(a)
    kw = dict(ensemble="nve", timestep_fs=4.0, progress=False, log_every=25)
    res = md.simulate(m, params, reps, 500, **kw)
    total = res.log["energy"] + res.log["kinetic"]
    ps = 500 * 4.0 / 1000
    drift = np.abs(total[-1] - total[0]) / len(reps[0]) / ps
    assert np.all(drift < 1e-4), drift  # < 0.1 meV/atom/ps
    assert np.all(res.log["kinetic"].std(0) > 1e-3)  # it did move
    for k, a in enumerate(reps):
        one = md.simulate(m, params, a, 500, **kw)
        np.testing.assert_allclose(one.atoms[0].positions, res.atoms[k].positions, atol=2e-4)
        np.testing.assert_allclose(one.log["energy"][:, 0], res.log["energy"][:, k], atol=1e-4)


_FLOAT64 = """
import os, sys, jax, jax.numpy as jnp, numpy as np
sys.path[:0] = sys.argv[1].split(os.pathsep)
import test_md, jaxmat.md as md
m, params = test_md.pot()
res = md.simulate(m, params, test_md.argon(), 40, dtype=jnp.float64, **test_md.F64_RUN)
assert res.log["energy"].dtype == np.float64 and not res.failed.any()
np.save(sys.argv[2], res.log["energy"])
"""
F64_RUN = dict(ensemble="nve", timestep_fs=2.0, temperature_K=40.0, seed=2, progress=False,
               log_every=10)


@pytest.mark.slow  # 27 s (a second process compiles the run in float64)
def test_float64_run_follows_the_float32_one(tmp_path):
    """``dtype=float64`` (x64 on, a fresh process: jit caches do not survive switching x64)
    runs with the float32 neighbour lists and gives the float32 energies to 1e-4."""
    out = tmp_path / "e64.npy"
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _FLOAT64,
                           os.pathsep.join([os.path.dirname(__file__), TESTS]), str(out)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m, params = pot()
    single = md.simulate(m, params, argon(), 40, **F64_RUN)
    np.testing.assert_allclose(np.load(out), single.log["energy"], rtol=1e-4)


def test_langevin_holds_the_temperature():
    m, params = pot()
    T = 60.0
    res = md.simulate(m, params, argon(), 2000, ensemble="nvt", timestep_fs=5.0,
                      temperature_K=T, friction_per_fs=0.02, replicas=6, seed=1,
                      progress=False, log_every=5)
    mean = res.log["temperature"][len(res.log_steps) // 4:].mean()
    assert abs(mean - T) / T < 0.05, mean
    assert not res.failed.any()


def test_npt_volume_follows_pressure():
    m, params = pot()
    vols = {}
    for p_gpa in (0.0, 0.3):
        res = md.simulate(m, params, argon(), 600, ensemble="npt", timestep_fs=5.0,
                          temperature_K=40.0, pressure=p_gpa * units.GPa,
                          barostat_time_fs=200.0, compressibility=1 / (3 * units.GPa),
                          seed=0, progress=False, log_every=50)
        vols[p_gpa] = res.log["volume"][-4:, 0].mean()
        assert res.atoms[0].get_volume() == pytest.approx(res.log["volume"][-1, 0], rel=1e-5)
    v0 = argon().get_volume()
    assert vols[0.3] < vols[0.0] and vols[0.3] < v0, (vols, v0)


# --------------------------------------------------------------------------- failures
def test_failure_detector_codes():
    m, params = pot()
    good = argon()
    close = argon()
    close.positions[1] = close.positions[0] + [0.3, 0.0, 0.0]  # a collision already
    res = md.simulate(m, params, [good, close], 20, ensemble="nve", timestep_fs=2.0,
                      progress=False, log_every=10)
    assert list(res.failed) == [False, True]
    assert res.fail_reason[1] == md.REASONS[2] and res.fail_step[1] == 0  # at the start
    # bond broken: a dimer flying apart
    dimer = Atoms("N2", positions=[[0, 0, 0], [1.1, 0, 0]])
    dimer.set_velocities([[-0.3, 0, 0], [0.3, 0, 0]])
    crit = md.FailureCriteria(bond_break=1.5)
    res = md.simulate(m, params, dimer, 100, ensemble="nve", timestep_fs=1.0,
                      criteria=crit, progress=False, log_every=10)
    assert res.failed[0] and res.fail_reason[0] == "bond broken"
    # non-finite: an energy with a log singularity below 1.45 Å
    base = morse(D=0.012, a=1.3, r0=3.8, cutoff=6.0)

    def apply(p, b):
        d = jnp.linalg.norm(graph.edge_vectors(b), axis=-1)
        bad = jnp.sum(jnp.where(b.edges["mask"], jnp.log(d - 1.45), 0.0))
        return {"energy": base.apply(p, b)["energy"] + 0.0 * bad}

    nan_model = potential.potential(Model(base.init, apply, None, "nan", GraphSpec(6.0)))
    pair = Atoms("Ar2", positions=[[0, 0, 0], [1.5, 0, 0]])
    pair.set_velocities([[0.2, 0, 0], [-0.2, 0, 0]])
    res = md.simulate(nan_model, params, pair, 50, ensemble="nve", timestep_fs=1.0,
                      criteria=md.FailureCriteria(min_distance=None), progress=False,
                      log_every=10)
    assert res.failed[0] and res.fail_reason[0] == "non-finite values"
    assert np.all(np.isfinite(res.atoms[0].positions))  # frozen at its last good step


def test_committee_sigma_is_logged_and_can_stop_a_replica():
    m, p = pot()
    committee = jax.tree_util.tree_map(lambda x: jnp.stack([x, 1.5 * x]), p)
    res = md.simulate(m, committee, argon(), 20, ensemble="nvt", temperature_K=40,
                      progress=False, log_every=10, replicas=2)
    assert np.all(res.log["energy_std"] > 0) and not res.failed.any()
    cal = {"energy": {"scale": 2.0}, "forces": {"scale": 1.0}}
    res = md.simulate(m, committee, argon(), 20, ensemble="nvt", temperature_K=40,
                      criteria=md.FailureCriteria(max_energy_std=1e-6), progress=False,
                      log_every=10, replicas=2, calibration=cal)
    assert res.failed.all() and set(res.fail_reason) == {md.REASONS[5]}
    # the threshold is on the calibrated σ: raw σ x scale
    sig = float(res.log["energy_std"][0, 0])
    for scale, fails in ((0.9, False), (1.1, True)):
        res = md.simulate(m, committee, argon(), 10, ensemble="nvt", temperature_K=40,
                          criteria=md.FailureCriteria(max_energy_std=sig, max_forces_std=None),
                          progress=False, log_every=10, calibration={"energy": {"scale": scale}})
        assert (res.fail_step[0] == 0) == fails
    # a power-law calibration (the default form): the threshold is on a σ^b (knee k)
    power = {"scale": 0.3, "power": 0.5, "knee": 10.0}
    cal_sig = calibrate.apply_map(sig, calibrate.sigma_map(power))
    for f, fails in ((1.1, False), (0.9, True)):
        res = md.simulate(m, committee, argon(), 10, ensemble="nvt", temperature_K=40,
                          criteria=md.FailureCriteria(max_energy_std=f * cal_sig,
                                                      max_forces_std=None),
                          progress=False, log_every=10, calibration={"energy": power})
        assert (res.fail_step[0] == 0) == fails


def test_bad_inputs_raise():
    m, params = pot()
    a, b = argon(), molecule("NH3")
    with pytest.raises(ValueError, match="same atoms"):
        md.simulate(m, params, [a, b], 10, progress=False)
    nan = argon()
    nan.positions[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        md.simulate(m, params, nan, 10, progress=False)
    with pytest.raises(ValueError, match="ensemble"):
        md.simulate(m, params, a, 10, ensemble="nph", progress=False)
    with pytest.raises(ValueError, match="NPT needs"):
        md.simulate(m, params, b, 10, ensemble="npt", progress=False)


# --------------------------------------------------------------------------- forces
def test_forces_equal_the_ase_calculator_on_a_periodic_cell():
    from jaxmat.ase import JaxmatCalculator
    from jaxmat.md.forces import force_fn
    from jaxmat.models.schnet import SchNetConfig, schnet

    m = potential.potential(schnet(SchNetConfig(n_features=16, n_interactions=2, cutoff=4.0)))
    at = si_cell()
    params = m.init(jax.random.key(1), graph.batch(graph.records([at], m, labels=False)))
    spec, nl = neighbors.allocate(at.positions, np.asarray(at.cell), at.pbc, 4.0, skin=1.0)
    stack = jax.tree_util.tree_map(lambda x: x[None], nl)
    out = force_fn(m, at.numbers, at.pbc, False)(
        params, jnp.asarray(at.positions[None], jnp.float32),
        jnp.asarray(np.asarray(at.cell)[None], jnp.float32), stack)
    ref = at.copy()
    ref.calc = JaxmatCalculator(m, params)
    np.testing.assert_allclose(float(out["energy"][0]), ref.get_potential_energy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["forces"][0]), ref.get_forces(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["stress"][0]),
                               ref.get_stress(voigt=False), atol=1e-5)
