"""Robustness (success fraction of NN-driven MD replicas) on a toy pair potential with a
known unstable region (a hole at short distance), and oracle checks with a toy oracle that
disagrees in a known region."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from jaxmat.core import graph, potential
from jaxmat.core.protocol import GraphSpec, Model
from jaxmat.workflows.adversarial.oracle import Oracle
from jaxmat.workflows.adversarial.robustness import molecule_criteria, robustness

# pair energies (eV) of a dimer at distance r (Å): Gaussian wells (centre, depth, width),
# a hole at r = 0 (depth, width 0.6 Å), a harmonic wall beyond ``wall`` Å and a cliff
# (depth, at r Å): a drop that lets the dimer fly apart
HOLE = dict(wells=((2.0, 1.0, 0.3),), hole=4.0)  # barrier 0.96 eV between well and hole
TWO_WELLS = dict(wells=((2.0, 1.0, 0.3), (3.0, 1.0, 0.25)), wall=3.3)
CLIFF = dict(wells=((2.0, 1.0, 0.3),), cliff=(3.0, 2.9))  # barrier 0.88 eV near 2.5 Å
CRIT = molecule_criteria(bond_break=1.6)  # geometric only; the Ar-Ar bond breaks at 3.39 Å


def pair_energy(r, terms, xp=jnp):
    e = -terms.get("hole", 0.0) * xp.exp(-(r / 0.6) ** 2)
    if "wall" in terms:
        e = e + 5.0 * xp.where(r > terms["wall"], (r - terms["wall"]) ** 2, 0.0)
    if "cliff" in terms:
        depth, at = terms["cliff"]
        e = e - depth / (1.0 + xp.exp(-(r - at) / 0.1))
    for c, d, w in terms["wells"]:
        e = e - d * xp.exp(-((r - c) / w) ** 2)
    return e


def toy(terms: dict) -> tuple[Model, dict]:
    def init(key, batch):
        return {"scale": jnp.ones(())}

    def apply(p, b):
        d = jnp.linalg.norm(graph.edge_vectors(b), axis=-1)
        e = jnp.where(b.edges["mask"], 0.5 * pair_energy(d, terms), 0.0)
        node_e = jax.ops.segment_sum(e, b.receivers, b.nodes["positions"].shape[0])
        return {"energy": p["scale"] * graph.graph_sum(
            jnp.where(b.nodes["mask"], node_e, 0.0), b)}

    m = potential.potential(Model(init, apply, None, "toy-pair", GraphSpec(5.0)), stress=False)
    return m, m.init(jax.random.key(0), graph.batch(graph.records([dimer(2.0)], m, labels=False)))


def dimer(r: float) -> Atoms:
    return Atoms("Ar2", positions=[[0, 0, 0], [r, 0, 0]])


class ToyOracle(Calculator):
    """The two-well pair energy, shifted by ``shift`` eV (energy) or with ``push`` eV/Å added to
    atom 1's x force where r > 2.5 Å (the second well): a known region of disagreement."""

    implemented_properties = ["energy", "forces"]
    default_parameters = dict(shift=0.0, push=0.0)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        v = self.atoms.positions[1] - self.atoms.positions[0]
        r = np.linalg.norm(v)
        h = 1e-5
        de = (pair_energy(r + h, TWO_WELLS, np) - pair_energy(r - h, TWO_WELLS, np)) / (2 * h)
        f = np.zeros((2, 3))
        f[1] = -de * v / r
        f[0] = -f[1]
        far = r > 2.5
        self.results["energy"] = float(pair_energy(r, TWO_WELLS, np) + (self.parameters.shift if far else 0))
        f[1, 0] += self.parameters.push if far else 0.0
        self.results["forces"] = f


def test_success_fraction_equals_the_share_of_starts_outside_the_hole():
    """Low temperature: the 0.96 eV barrier between the well (r = 2 Å) and the hole is never
    crossed (kT = 0.026 eV), replicas started at r = 0.9 Å fall in. 28 of 40 succeed."""
    m, p = toy(HOLE)
    starts = [dimer(0.9)] * 3 + [dimer(2.0)] * 7  # used in turn: 12 of 40 in the hole
    res = robustness(m, p, starts, replicas=40, steps=300, temperature_K=300.0,
                     timestep_fs=1.0, criteria=CRIT, seed=1)
    assert res["success_fraction"] == pytest.approx(28 / 40)
    hole = [k % 10 < 3 for k in range(40)]
    assert res["failed"] == hole
    assert res["reasons"] == {"atoms too close": 12}
    assert res["success_stderr"] == pytest.approx(np.sqrt(0.7 * 0.3 / 40))
    r_end = [a.get_distance(0, 1) for a, h in zip(res["atoms"], hole) if not h]
    assert 1.6 < min(r_end) and max(r_end) < 2.4  # stayed in the well


def test_success_falls_when_the_barrier_is_thermally_crossed():
    """Starts in the well only, a cliff beyond a 0.88 eV barrier: none fail at 300 K
    (34 kT); at 20,000 K (kT = 1.7 eV, above the barrier) most fly apart (bond broken)."""
    m, p = toy(CLIFF)
    cold = robustness(m, p, dimer(2.0), replicas=32, steps=400, temperature_K=300.0,
                      timestep_fs=1.0, criteria=CRIT, seed=2)
    hot = robustness(m, p, dimer(2.0), replicas=32, steps=400, temperature_K=20000.0,
                     timestep_fs=1.0, friction_per_fs=0.05, criteria=CRIT, seed=2)
    assert cold["success_fraction"] == 1.0
    assert hot["success_fraction"] < 0.5
    assert set(hot["reasons"]) == {"bond broken"}
    steps = [s for s in hot["fail_step"] if s >= 0]
    assert min(steps) > 0 and max(steps) <= 400


@pytest.mark.parametrize("kind", ["energy", "forces"])
def test_oracle_checks_fail_the_replicas_in_the_region_of_disagreement(kind):
    """The oracle disagrees only in the second well (r > 2.5 Å): by 1 eV (0.5 eV/atom) or
    by 3 eV/Å on one atom. Replicas started there fail at the first check, the others
    pass; a tolerance above the disagreement passes everyone."""
    m, p = toy(TWO_WELLS)
    shift, push = (1.0, 0.0) if kind == "energy" else (0.0, 3.0)
    orc = Oracle.from_calculator(ToyOracle(shift=shift, push=push), "toy")
    starts = [dimer(2.0), dimer(2.0), dimer(3.0)]  # every third replica in the far well
    tol = dict(energy_tol=0.2, forces_tol=None) if kind == "energy" else \
        dict(energy_tol=None, forces_tol=1.0)
    res = robustness(m, p, starts, replicas=12, steps=200, temperature_K=300.0,
                     timestep_fs=1.0, criteria=CRIT, oracle=orc, check_every=50, seed=3, **tol)
    far = [k % 3 == 2 for k in range(12)]
    assert res["failed"] == far
    assert res["success_fraction"] == pytest.approx(8 / 12)
    assert res["reasons"] == {f"oracle disagrees ({kind})": 4}
    assert all(s == 50 for s, f in zip(res["fail_step"], far) if f)
    assert res["n_oracle_checks"] == 8 * 4 + 4  # live replicas at 4 checks; far ones once
    loose = {k: (None if v is None else 10.0) for k, v in tol.items()}
    with ThreadPoolExecutor(2) as pool:
        ok = robustness(m, p, starts, replicas=12, steps=200, temperature_K=300.0,
                        timestep_fs=1.0, criteria=CRIT, oracle=orc, check_every=50, seed=3,
                        executor=pool, **loose)
    assert ok["success_fraction"] == 1.0 and ok["n_oracle_checks"] == 48


def test_a_failing_oracle_fails_the_replica_and_bad_arguments_raise():
    m, p = toy(TWO_WELLS)

    class Broken(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            raise RuntimeError("SCF not converged")

    res = robustness(m, p, dimer(2.0), replicas=2, steps=20, temperature_K=300.0,
                     criteria=CRIT, oracle=Oracle.from_calculator(Broken(), "broken"),
                     check_every=10)
    assert res["failed"] == [True, True] and res["reasons"] == {"oracle failed": 2}
    with pytest.raises(ValueError, match="check_every"):
        robustness(m, p, dimer(2.0), replicas=2, steps=20, oracle=res and None, check_every=5)
    with pytest.raises(ValueError, match="replicas"):
        robustness(m, p, [], replicas=2, steps=20)
