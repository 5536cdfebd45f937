"""Normal-mode sampling: modes of analytic Hessians, the finite-difference Hessian of a
harmonic pair model, and the thermal variance of the samples (k_B T / k)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms, units

from jaxmat.core import graph, potential
from jaxmat.core.protocol import GraphSpec, Model
from jaxmat.workflows.adversarial import normal_modes as nm

K, R0 = 36.0, 0.74  # eV/Å², Å: H2 at about 4,400 cm⁻¹


def harmonic_pair() -> tuple[Model, dict]:
    def init(key, batch):
        return {"k": jnp.asarray(K)}

    def apply(p, b):
        d = jnp.linalg.norm(graph.edge_vectors(b), axis=-1)
        e = jnp.where(b.edges["mask"], 0.25 * p["k"] * (d - R0) ** 2, 0.0)  # both directions
        node_e = jax.ops.segment_sum(e, b.receivers, b.nodes["positions"].shape[0])
        return {"energy": graph.graph_sum(jnp.where(b.nodes["mask"], node_e, 0.0), b)}

    m = potential.potential(Model(init, apply, None, "harmonic-pair", GraphSpec(3.0)),
                            stress=False)
    return m, m.init(jax.random.key(0), graph.batch(graph.records([h2()], m, labels=False)))


def h2(r: float = R0) -> Atoms:
    u = np.array([1.0, 0.1, 0.0]) / np.linalg.norm([1.0, 0.1, 0.0])  # off the axes
    return Atoms("H2", positions=[[0, 0, 0], r * u])


def test_hessian_of_a_harmonic_bond_and_its_one_mode():
    model, params = harmonic_pair()
    a = h2()
    h = nm.hessian(model, params, a)
    u = (a.positions[1] - a.positions[0]) / np.linalg.norm(a.positions[1] - a.positions[0])
    block = K * np.outer(u, u)  # at r0 only the stretch is stiff
    ref = np.block([[block, -block], [-block, block]])
    np.testing.assert_allclose(h, ref, atol=2e-2)
    w2, vec = nm.modes(a, h)
    assert w2.shape == (1,)  # a linear molecule: 3N - 5 = 1 vibration
    mu = a.get_masses()[0] / 2
    np.testing.assert_allclose(w2[0], K / mu, rtol=2e-3)
    np.testing.assert_allclose(np.sqrt(w2[0] / nm._omega2_of(1.0)), 4407, rtol=2e-3)


def test_samples_have_the_thermal_bond_variance():
    model, params = harmonic_pair()
    a = h2()
    h = nm.hessian(model, params, a)
    s = nm.samples(a, h, 600.0, 4000, np.random.default_rng(0))
    d = np.array([b.get_distance(0, 1) for b in s])
    np.testing.assert_allclose(d.var(), units.kB * 600.0 / K, rtol=0.08)
    np.testing.assert_allclose(d.mean(), R0, atol=2e-3)
    com = np.array([b.get_center_of_mass() for b in s])
    np.testing.assert_allclose(com, np.broadcast_to(a.get_center_of_mass(), com.shape),
                               atol=1e-9)  # rigid-body motion removed


def test_nonlinear_molecule_has_3n_minus_6_modes_and_soft_modes_are_held():
    a = Atoms("H2O", positions=[[0.76, 0.59, 0], [-0.76, 0.59, 0], [0, 0, 0]])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 9))
    h = x @ x.T  # any symmetric Hessian, rigid-body modes projected out
    w2, vec = nm.modes(a, h)
    assert w2.shape == (3,) and vec.shape == (3, 9)
    np.testing.assert_allclose(vec @ vec.T, np.eye(3), atol=1e-9)
    flat = nm.samples(a, np.zeros((9, 9)), 300.0, 200, rng, min_wavenumber=100.0)
    spread = np.std([b.positions for b in flat], axis=0).max()
    assert 0 < spread < 1.0  # zero curvature: amplitudes of a 100 cm⁻¹ mode, not infinite
    with pytest.raises(ValueError, match="temperature_K"):
        nm.samples(a, h, 0.0, 1, rng)
