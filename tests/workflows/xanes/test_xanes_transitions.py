"""The peak-preserving transition head: its broadening is the generator's, gradients are
finite, and it round-trips through a bundle (padding: tests/models/test_conformance.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat import graph
from jaxmat.data.xanes import site_records
from jaxmat.models.schnet import SchNetConfig
from jaxmat.models.spectral import (TransitionHeadConfig, broaden_sticks,
                                    schnet_transition_spectral, spectrum_loss)
from jaxmat.workflows.xanes.broaden import Broadening, broaden, grid

GRID = (526.0, 552.0, 261)


def _records():
    recs = []
    for k, numbers in enumerate([[8, 6, 6, 1, 1, 8], [7, 6, 8, 1], [8, 1, 1]]):
        r = np.random.default_rng(k)
        pos = r.normal(size=(len(numbers), 3)) * 1.2
        while np.min(np.linalg.norm(pos[:, None] - pos[None], axis=-1)
                     + 10 * np.eye(len(numbers))) < 0.9:
            pos = r.normal(size=(len(numbers), 3)) * 1.2
        sites = [a for a in range(len(numbers)) if numbers[a] == 8]
        spec = np.random.default_rng([7, k]).random((len(sites), GRID[2]))
        recs.append(site_records(np.array(numbers), pos, sites, spec, cutoff=4.0, name=f"m{k}"))
    return recs


def _model(widths=False):
    return schnet_transition_spectral(
        SchNetConfig(n_features=16, n_interactions=2, n_rbf=8, max_z=10),
        TransitionHeadConfig(z=8, grid=GRID, n_transitions=6, hidden=16, edge=537.7,
                             widths=widths))


def test_numpy_broadening_is_the_gaussian_sum():
    r = np.random.default_rng(0)
    e, f = r.uniform(528, 560, 30), r.random(30)
    g, b, edge = grid("O"), Broadening(), 538.0
    fwhm = b.fwhm_below + (b.fwhm_above - b.fwhm_below) * np.clip((e - edge) / b.ramp, 0, 1)
    s = fwhm / (2 * np.sqrt(2 * np.log(2)))
    want = (np.exp(-0.5 * ((g[:, None] - e) / s) ** 2) / (s * np.sqrt(2 * np.pi))) @ f
    np.testing.assert_allclose(broaden(e, f, g, edge, b), want, rtol=1e-12)
    # area = strength (a stick well inside the grid)
    one = broaden(np.array([535.0]), np.array([2.0]), g, edge)
    np.testing.assert_allclose(one.sum() * (g[1] - g[0]), 2.0, rtol=1e-6)


@pytest.mark.parametrize("widths", [False, True])
def test_predicted_transitions_broaden_as_the_generator_does(widths):
    model = _model(widths)
    b = graph.batch(_records())
    out = jax.jit(model.apply)(model.init(jax.random.key(0), b), b)
    z, mask = np.asarray(b.nodes["species"]), np.asarray(b.nodes["mask"])
    site = np.asarray(out["xanes_site"])
    g = grid("O")
    for a in np.flatnonzero((z == 8) & mask):
        e = np.asarray(out["xanes_site_energy"][a], np.float64)
        f = np.asarray(out["xanes_site_strength"][a], np.float64)
        edge = float(out["xanes_site_edge"][a])
        assert np.all(f >= 0) and abs(edge - 537.7) <= 5.0
        assert np.all((e >= GRID[0] - 2) & (e <= GRID[1] + 8))
        if widths:  # learned factors on the generator's widths, in [0.5, 2]
            ratio = np.asarray(out["xanes_site_width"][a]) / Broadening().fwhm(e, edge)
            assert np.all((ratio >= 0.5 - 1e-5) & (ratio <= 2 + 1e-5))
            want = broaden_sticks(e, f, g, np.asarray(out["xanes_site_width"][a], np.float64))
        else:
            want = broaden(e, f, g, edge, Broadening())
        # float32 model vs float64 generator: energies carry ~1e-5 eV of rounding
        np.testing.assert_allclose(site[a], want, rtol=1e-3, atol=1e-4 * want.max())
    assert np.all(site[z != 8] == 0) and float(site.max()) > 0
    for m in range(3):  # molecule = mean over its O sites
        rows = (np.asarray(b.nodes["graph"]) == m) & (z == 8)
        np.testing.assert_allclose(site[rows].mean(0), np.asarray(out["xanes"][m]), rtol=1e-5,
                                   atol=1e-7)


def test_gradients_finite_and_loss_trains():
    model = _model(widths=True)
    b = graph.batch(_records(), graph.Budget(64, 256, 6))  # generous padding
    params = model.init(jax.random.key(1), b)
    loss = spectrum_loss()
    grads = jax.jit(jax.grad(lambda p, bb: loss(model.apply(p, bb), bb)[0]))(
        params, graph.to_device(b))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    # gradient w.r.t. positions (an interpretation tool's view) is finite too
    bd = graph.to_device(b)
    gpos = jax.jit(jax.grad(lambda r, bb: model.apply(params, bb._replace(
        nodes={**bb.nodes, "positions": r}))["xanes"].sum()))(bd.nodes["positions"], bd)
    assert np.all(np.isfinite(np.asarray(gpos)))


def test_transition_head_bundle_round_trip(tmp_path):
    import jaxmat

    model = _model()
    b = graph.batch(_records())
    params = model.init(jax.random.key(3), b)
    path = jaxmat.bundle.save(tmp_path / "t", model, params)
    back = jaxmat.bundle.load(path)
    assert back.model.name == "SchNetSiteTransitions"
    np.testing.assert_allclose(np.asarray(back.model.apply(back.params, b)["xanes"]),
                               np.asarray(model.apply(params, b)["xanes"]), rtol=1e-6)
