"""Unordered pair lists of sparse batches (graph.pair_list): the pair convolution equals the
directed one, for periodic cells with self-images, padding and any edge order."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxmat import graph
from jaxmat.models import SchNetConfig, schnet
from jaxmat.core import potential


def _records():
    rng = np.random.default_rng(0)
    si = bulk("Si", "diamond", a=5.43)  # 2 atoms: cutoff 5 Å > cell, self-images
    si.positions += rng.normal(scale=0.05, size=si.positions.shape)
    big = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1))
    big.positions += rng.normal(scale=0.05, size=big.positions.shape)
    mol = graph.make_record([6, 1, 1, 8], rng.normal(scale=1.2, size=(4, 3)) + np.eye(4, 3) * 2, 5.0)
    return [graph.atoms_to_record(si, 5.0), graph.atoms_to_record(big, 5.0), mol]


def _permuted(b: graph.Batch, seed: int) -> graph.Batch:
    """The same batch with its edges in random order (padding edges interleaved)."""
    p = np.random.default_rng(seed).permutation(b.senders.shape[0])
    return b._replace(senders=b.senders[p], receivers=b.receivers[p],
                      edges={k: v[p] for k, v in b.edges.items()})


@pytest.mark.parametrize("seed", [None, 1])
def test_pair_convolution_equals_directed(seed):
    recs = _records()
    b = graph.batch(recs, graph.Budget(sum(r.n_node for r in recs) + 3,
                                       sum(r.n_edge for r in recs) + 64, len(recs) + 1))
    if seed is not None:
        b = _permuted(b, seed)
    b = graph.to_device(b)
    pairs = graph.pair_list(b)
    assert int(pairs.mask.sum()) * 2 == int(b.edges["mask"].sum())
    d_full = graph.safe_norm(graph.edge_vectors(b))
    d_pair = graph.safe_norm(graph.pair_vectors(b, pairs))
    # the multiset of pair distances, doubled, is that of the directed edges
    np.testing.assert_allclose(np.sort(np.repeat(np.asarray(d_pair)[np.asarray(pairs.mask)], 2)),
                               np.sort(np.asarray(d_full)[np.asarray(b.edges["mask"])]), atol=1e-5)
    h = jax.random.normal(jax.random.key(0), (b.nodes["positions"].shape[0], 5))

    def filt(d, m):
        return jnp.stack([jnp.cos(k * d) for k in range(1, 6)], -1) * m[:, None]

    full = graph.convolve(h, filt(d_full, b.edges["mask"]), b)
    half = graph.convolve(h, filt(d_pair, pairs.mask), b, pairs)
    np.testing.assert_allclose(half, full, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(full).sum()) > 1.0


def test_schnet_forces_stress_independent_of_edge_order():
    recs = _records()[:2]
    model = potential.potential(schnet(SchNetConfig(n_features=16, n_interactions=2, n_rbf=10)))
    b = graph.batch(recs)
    params = model.init(jax.random.key(0), graph.to_device(b))
    apply = jax.jit(model.apply)  # one program for every batch below (same shapes)
    out = apply(params, graph.to_device(b))
    outp = apply(params, graph.to_device(_permuted(b, 3)))
    for k in ("energy", "forces", "stress"):
        np.testing.assert_allclose(outp[k], out[k], rtol=1e-5, atol=1e-5)
    # stress: finite differences of the energy under strain (eV/Å³)
    eps = 1e-3
    e_plus = apply(params, graph.to_device(_strained(b, eps)))["energy"]
    e_minus = apply(params, graph.to_device(_strained(b, -eps)))["energy"]
    vol = np.abs(np.linalg.det(np.asarray(b.globals["cell"][:2])))
    fd = (np.asarray(e_plus - e_minus)[:2] / (2 * eps)) / vol
    np.testing.assert_allclose(np.asarray(out["stress"])[:2, 0, 0], fd, rtol=2e-2, atol=2e-4)


def _strained(b: graph.Batch, eps: float) -> graph.Batch:
    s = np.eye(3)
    s[0, 0] += eps
    cell = np.array(b.globals["cell"])
    cell[:-1] = cell[:-1] @ s
    return b._replace(nodes={**b.nodes, "positions": np.asarray(b.nodes["positions"]) @ s},
                      globals={**b.globals, "cell": cell})


def test_asymmetric_edge_list_raises():
    r = _records()[1]
    bad = dataclasses.replace(r, senders=r.senders[1:], receivers=r.receivers[1:],
                              shifts=r.shifts[1:])
    with pytest.raises(ValueError, match="not symmetric"):
        graph.batch([bad])


def test_schnet_on_device_list_equals_host_batch():
    """MD's on-device lists (skin edges, padding slots between real ones) give the pairs too."""
    from jaxmat.core import neighbors
    from jaxmat.md import forces as md_forces

    at = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1))
    at.rattle(0.05, seed=1)
    model = potential.potential(schnet(SchNetConfig(n_features=16, n_interactions=2, n_rbf=10)))
    b = graph.to_device(graph.batch([graph.atoms_to_record(at, 5.0)]))
    params = model.init(jax.random.key(0), b)
    ref = jax.jit(model.apply)(params, b)
    _, nb = neighbors.allocate(at.positions, np.asarray(at.cell), at.pbc, 5.0, skin=0.5)
    nb = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], nb)
    fn = md_forces.make_force_fn(model, at.numbers, at.pbc, False)
    out = fn(params, jnp.asarray(at.positions, jnp.float32)[None],
             jnp.asarray(np.asarray(at.cell), jnp.float32)[None], nb)
    np.testing.assert_allclose(out["energy"][0], ref["energy"][0], rtol=1e-5)
    np.testing.assert_allclose(out["forces"][0], ref["forces"][:len(at)], atol=1e-6)
    np.testing.assert_allclose(out["stress"][0], ref["stress"][0], atol=1e-7)
    assert float(jnp.abs(ref["forces"]).max()) > 1e-4
