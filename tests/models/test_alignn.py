"""ALIGNN-style model: outputs invariant to atom permutation, padding, batch neighbours
and rotation; scalar and vector heads; finite input gradients; training through the protocol."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxmat import graph, linegraph, train
from jaxmat.data import jarvis
from jaxmat.models import ALIGNNConfig, alignn

CFG = ALIGNNConfig(n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=16,
                   n_bond_rbf=16, n_angle_rbf=8, n_outputs=5, output_key="dos",
                   scale=2.0, shift=0.5)
MODEL = alignn(CFG)
BUDGET = graph.Budget(n_node=48, n_edge=768, n_graph=4, n_triplet=9216)


@pytest.fixture(scope="module")
def structures():
    atoms = jarvis.load_jarvis_bandgap()
    by_size = sorted(atoms, key=len)
    return [a for a in by_size if 6 <= len(a) <= 10 and len(set(a.numbers)) > 1][:3]


def randomise_head(p, key):
    """The head starts at zero (outputs = shift); give it weights so outputs vary."""
    k = p["head"]["kernel"]
    return {**p, "head": {**p["head"], "kernel": 0.3 * jax.random.normal(key, k.shape)}}


@pytest.fixture(scope="module")
def params(structures):
    recs = linegraph.records_from_atoms(structures[:1])
    p = MODEL.init(jax.random.key(0), graph.batch(recs, BUDGET))
    np.testing.assert_array_equal(np.asarray(MODEL.apply(p, graph.batch(recs, BUDGET))["dos"])[0],
                                  CFG.shift)  # untrained = shift
    return randomise_head(p, jax.random.key(5))


@pytest.fixture(scope="module")
def apply():
    return jax.jit(MODEL.apply)


def predict(apply, params, atoms_list, budget=BUDGET):
    recs = linegraph.records_from_atoms(atoms_list)
    return np.asarray(apply(params, graph.batch(recs, budget))["dos"])


def test_output_shapes_and_vector_head(apply, params, structures):
    y = predict(apply, params, structures)
    assert y.shape == (BUDGET.n_graph, CFG.n_outputs)
    assert np.isfinite(y).all()
    assert np.std(y[:3], axis=0).max() > 1e-4  # structures are told apart
    scalar = alignn(ALIGNNConfig(n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=16,
                                 n_bond_rbf=16, n_angle_rbf=8))
    b = graph.batch(linegraph.records_from_atoms(structures), BUDGET)
    out = jax.jit(scalar.apply)(randomise_head(scalar.init(jax.random.key(1), b), jax.random.key(2)), b)
    assert out["target"].shape == (BUDGET.n_graph,)


def test_invariant_to_rotation_and_gradients_finite(apply, params, structures):
    atoms = structures[0]
    R = Rotation.from_euler("xyz", [0.3, 1.2, -0.8]).as_matrix()
    rot = atoms.copy()
    rot.positions = atoms.positions @ R.T
    rot.cell = np.asarray(atoms.cell) @ R.T
    np.testing.assert_allclose(predict(apply, params, [rot])[0], predict(apply, params, [atoms])[0],
                               rtol=1e-5, atol=1e-5)
    b = graph.batch(linegraph.records_from_atoms([atoms]), BUDGET)

    def f(pos):
        return MODEL.apply(params, b._replace(nodes={**b.nodes, "positions": pos}))["dos"][0, 0]

    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(b.nodes["positions"])))
    assert np.isfinite(g).all()
    # translation invariance: the gradients of the real atoms sum to zero
    np.testing.assert_allclose(g[: len(atoms)].sum(0), 0.0, atol=1e-4)


def test_needs_line_graph(params, structures):
    b = graph.batch([graph.atoms_to_record(structures[0], 4.0)])
    with pytest.raises(ValueError, match="line graph"):
        MODEL.apply(params, b)


def test_training_reduces_loss_on_a_vector_target(structures):
    """Fit 3 structures' 5-point target vectors: the masked loss must fall."""
    recs = linegraph.records_from_atoms(structures)
    rng = np.random.default_rng(0)
    for r in recs:
        r.targets["dos"] = rng.uniform(0.0, 1.0, CFG.n_outputs)
    b = graph.to_device(graph.batch(recs, BUDGET))
    loss = train.target_loss("dos")
    opt = train.make_optimizer(1e-2, 60)
    step = jax.jit(train.make_step(MODEL, loss, opt))
    p = MODEL.init(jax.random.key(3), b)
    st = opt.init(p)
    first = None
    for k in range(60):
        p, st, value, _ = step(p, st, b, jax.random.key(k))
        first = float(value) if first is None else first
    assert float(value) < 0.2 * first
