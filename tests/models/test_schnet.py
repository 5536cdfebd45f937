"""SchNet on both batch layouts: the dense per-molecule layout (pair slots, rolls, chunks)
must give the same energies and forces as the sparse edge list, and its padding
(empty atom slots, masked pair slots, padding graphs) must contribute exactly zero."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmat import graph, potential, train
from jaxmat.models import SchNetConfig, schnet
from jaxmat.models.layers import shifted_softplus
from conftest import random_molecules

CUTOFF = 4.0


def _molecules(sizes, seed=0):
    return random_molecules(sizes, CUTOFF, seed)


@pytest.fixture(scope="module")
def setup():
    recs = _molecules([5, 9, 2, 7, 1, 8, 6])  # odd and even sizes, one single atom
    cfg = SchNetConfig(n_features=16, n_interactions=2, n_rbf=12, cutoff=CUTOFF)
    model = potential.potential(schnet(cfg), stress=False, chunk_slots=None)
    params = model.init(jax.random.key(0), graph.batch(recs))
    params = jax.tree_util.tree_map(  # non-zero biases so padding would show up
        lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)
    return recs, model, params


def _real(out, batch, n_graphs):
    mask = np.asarray(batch.nodes["mask"])
    return np.asarray(out["energy"])[:n_graphs], np.asarray(out["forces"])[mask]


def test_dense_layout_conventions():
    recs = _molecules([3, 4])
    b = graph.batch(recs, layout="dense")
    n, K = 4, 2
    assert graph.is_dense(b) and not graph.is_dense(graph.batch(recs))
    assert b.senders.shape == (2 * n * K,) and b.nodes["positions"].shape == (2 * n, 3)
    np.testing.assert_array_equal(b.nodes["mask"], [1, 1, 1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(b.globals["n_atoms"], [3, 4])
    # every unordered neighbour pair exactly once, masked slots elsewhere
    for g, r in enumerate(recs):
        sl = slice(g * n * K, (g + 1) * n * K)
        m = np.asarray(b.edges["mask"][sl])
        got = {tuple(sorted((int(i) - g * n, int(j) - g * n)))
               for i, j in zip(b.receivers[sl][m], b.senders[sl][m])}
        want = {tuple(sorted((int(i), int(j)))) for i, j in zip(r.receivers, r.senders)}
        assert got == want and m.sum() == len(want)
    # pair vectors point from receiver to sender
    v = np.asarray(graph.edge_vectors(graph.to_device(b)))
    pos = b.nodes["positions"]
    np.testing.assert_allclose(v, pos[b.senders] - pos[b.receivers], atol=1e-6)
    with pytest.raises(ValueError, match="non-periodic"):
        periodic = graph.make_record([14, 14], [[0, 0, 0], [1.3, 1.3, 1.3]], 3.0,
                                     cell=np.eye(3) * 5.4, pbc=True)
        graph.batch([periodic], layout="dense")
    with pytest.raises(ValueError, match="layout"):
        graph.batch(recs, layout="blocks")


def test_dense_equals_sparse(setup):
    recs, model, params = setup
    apply = jax.jit(model.apply)
    sparse = graph.batch(recs)
    dense = graph.batch(recs, layout="dense")
    e_s, f_s = _real(apply(params, sparse), sparse, len(recs))
    e_d, f_d = _real(apply(params, dense), dense, len(recs))
    assert np.abs(f_s).max() > 1e-2  # a non-trivial check
    np.testing.assert_allclose(e_d, e_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f_d, f_s, rtol=1e-4, atol=1e-5)


def test_dense_padding_contributes_zero(setup):
    recs, model, params = setup
    apply = jax.jit(model.apply)
    tight = graph.batch(recs, layout="dense")
    n_max = max(r.n_node for r in recs)
    # 3 extra atom slots per molecule and 5 padding graphs
    G, n = len(recs) + 5, n_max + 3
    loose = graph.batch(recs, graph.Budget(G * n, G * n * (n // 2), G), layout="dense")
    out_t, out_l = apply(params, tight), apply(params, loose)
    e_t, f_t = _real(out_t, tight, len(recs))
    e_l, f_l = _real(out_l, loose, len(recs))
    np.testing.assert_allclose(e_l, e_t, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f_l, f_t, rtol=1e-5, atol=1e-6)
    pad = ~np.asarray(loose.nodes["mask"])
    assert np.all(np.asarray(out_l["energy"])[len(recs):] == 0.0)
    assert np.all(np.asarray(out_l["forces"])[pad] == 0.0)
    assert np.all(np.asarray(out_l["atomic_energies"])[pad] == 0.0)
    # alone == in a batch
    alone = graph.batch([recs[1]], layout="dense")
    e_a, f_a = _real(apply(params, alone), alone, 1)
    np.testing.assert_allclose(e_a, e_t[1:2], rtol=1e-6, atol=1e-6)


def test_chunks_change_nothing(setup):
    recs, _, params = setup
    cfg = SchNetConfig(n_features=16, n_interactions=2, n_rbf=12, cutoff=CUTOFF)
    recs = recs * 2  # 14 molecules, n_max 9, K 4: 36 slots per molecule
    b = graph.batch(recs, layout="dense")
    assert graph.dense_chunks(b, 80) == 7  # 2 molecules (72 slots) per chunk
    assert graph.dense_chunks(b, 10_000) == 1 and graph.dense_chunks(graph.batch(recs)) == 1
    whole = potential.potential(schnet(cfg), chunk_slots=None)
    chunked = potential.potential(schnet(cfg), chunk_slots=80)
    o1, o2 = jax.jit(whole.apply)(params, b), jax.jit(chunked.apply)(params, b)
    for k in ("energy", "forces", "atomic_energies", "stress"):
        np.testing.assert_allclose(o2[k], o1[k], rtol=1e-5, atol=1e-6)
    assert o2["stress"].shape == (len(recs), 3, 3) and np.all(o2["stress"] == 0)
    # parameter gradients of an E + F loss through the chunked (rematerialised) map
    loss = train.energy_force_loss(1.0, 10.0)
    g1 = jax.jit(jax.grad(lambda p: loss(whole.apply(p, b), b)[0]))(params)
    g2 = jax.jit(jax.grad(lambda p: loss(chunked.apply(p, b), b)[0]))(params)
    for a, c in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-6)


def test_dense_forces_finite_differences():
    recs = _molecules([6, 4], seed=3)
    cfg = SchNetConfig(n_features=8, n_interactions=2, n_rbf=8, cutoff=CUTOFF)
    model = potential.potential(schnet(cfg), stress=False)
    with jax.enable_x64(True):
        b = graph.to_device(graph.batch(recs, layout="dense", dtype=np.float64))
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                        model.init(jax.random.key(0), b))
        out = jax.jit(model.apply)(params, b)
        pos = b.nodes["positions"]

        @jax.jit
        def energy(p):
            return jnp.sum(model.apply(params, b._replace(nodes={**b.nodes, "positions": p}))
                           ["energy"])

        h = 1e-5
        for atom, ax in [(0, 0), (3, 2), (7, 1)]:  # atoms of both molecules
            dp = jnp.zeros_like(pos).at[atom, ax].set(h)
            fd = -(energy(pos + dp) - energy(pos - dp)) / (2 * h)
            np.testing.assert_allclose(out["forces"][atom, ax], fd, rtol=1e-6, atol=1e-8)


def test_dense_training_step_matches_sparse(setup):
    recs, model, params = setup
    loss = train.energy_force_loss(1.0, 10.0)
    opt = optax.adam(1e-3)
    step = jax.jit(train.make_step(model, loss, opt))
    key = jax.random.key(0)
    out = []
    for layout in ("sparse", "dense"):
        b = graph.batch(recs, layout=layout)
        p, _, value, stats = step(params, opt.init(params), b, key)
        out.append((p, float(value), float(stats["forces_mae"][0] / stats["forces_mae"][1])))
    (p_s, v_s, f_s), (p_d, v_d, f_d) = out
    np.testing.assert_allclose(v_d, v_s, rtol=1e-5)
    np.testing.assert_allclose(f_d, f_s, rtol=1e-5)
    for a, c in zip(jax.tree_util.tree_leaves(p_s), jax.tree_util.tree_leaves(p_d)):
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-6)


def test_dense_loader_one_shape():
    recs = _molecules([3, 5, 4, 2, 5, 3, 4], seed=1)
    loader = graph.GraphLoader(recs, batch_size=3, layout="dense", seed=2)
    shapes = {jax.tree_util.tree_map(np.shape, b) == jax.tree_util.tree_map(
        np.shape, next(iter(loader))) for b in loader.epoch(1)}
    assert shapes == {True} and len(loader) == 3
    seen = sorted(int(x) for b in loader.epoch(1) for x in np.asarray(b.globals["n_atoms"])
                  if x > 0)
    assert seen == sorted(r.n_node for r in recs)
    # auto: dense for compact molecules (every pair a neighbour), sparse for crystals
    compact = [graph.make_record([7, 1, 1, 1], [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                 CUTOFF)] * 3
    model = schnet(SchNetConfig(n_features=8, n_interactions=1, cutoff=CUTOFF))
    assert graph.GraphLoader(compact, 2, layout="auto", model=model).layout == "dense"
    assert graph.GraphLoader(compact, 2, layout="auto").layout == "sparse"  # no model: safe
    crystal = graph.make_record([14, 14], [[0, 0, 0], [1.3, 1.3, 1.3]], 3.0,
                                cell=np.eye(3) * 5.4, pbc=True)
    assert graph.choose_layout([crystal]) == "sparse"


def test_shifted_softplus_derivatives():
    x = jnp.linspace(-30.0, 30.0, 41)
    np.testing.assert_allclose(shifted_softplus(x), jax.nn.softplus(x) - np.log(2.0), atol=1e-6)
    d1 = jax.vmap(jax.grad(shifted_softplus))(x)
    d2 = jax.vmap(jax.grad(jax.grad(shifted_softplus)))(x)
    s = jax.nn.sigmoid(x)
    np.testing.assert_allclose(d1, s, atol=1e-7)
    np.testing.assert_allclose(d2, s * (1 - s), atol=1e-7)
    assert float(shifted_softplus(jnp.float32(0.0))) == 0.0
