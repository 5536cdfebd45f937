"""The layout contract: every built-in model gives the same outputs in every batch layout
it declares, refuses a layout it does not declare, and padding cannot poison a gradient."""
import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmat import graph, linegraph, potential, protocol, train
from jaxmat.models import (ALIGNNConfig, PaiNNConfig, SchNetConfig, alignn, painn, schnet)
from jaxmat.models.coordinate import coordinate_mlp
from jaxmat.models.mpnn import MPNNConfig, mpnn
from jaxmat.models.spectral import SiteHeadConfig, painn_site_spectral, schnet_site_spectral
from conftest import random_molecules

CUTOFF = 4.0


def _molecules(sizes, seed=0):
    return random_molecules(sizes, CUTOFF, seed, spread=1.3)


def _jitter(params, seed=1):
    """Non-zero biases everywhere, so a padding leak would show up."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


BUILT_IN = {
    "SchNet": lambda: potential.potential(
        schnet(SchNetConfig(n_features=16, n_interactions=2, n_rbf=12, cutoff=CUTOFF)),
        stress=False, chunk_slots=None),
    "PaiNN": lambda: potential.potential(
        painn(PaiNNConfig(n_features=16, n_interactions=2, n_rbf=8, cutoff=CUTOFF)),
        stress=False, chunk_slots=None),
    "CoordinateMLP": lambda: coordinate_mlp(),
    "SchNetSiteSpectra": lambda: schnet_site_spectral(
        SchNetConfig(n_features=16, n_interactions=2, n_rbf=12, cutoff=CUTOFF),
        SiteHeadConfig(z=8, n_out=12, hidden=16)),
    "PaiNNSiteSpectra": lambda: painn_site_spectral(
        PaiNNConfig(n_features=16, n_interactions=1, n_rbf=8, cutoff=CUTOFF),
        SiteHeadConfig(z=8, n_out=12, hidden=16)),
    "MPNN": lambda: mpnn(MPNNConfig(n_features=8, n_steps=2, n_out=12, cutoff=CUTOFF)),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_declared_layout_gives_the_same_outputs(name):
    model = BUILT_IN[name]()
    recs = _molecules([5, 9, 2, 7, 1, 6])
    batches = {lay: graph.batch(recs, layout=lay) for lay in model.graph.layouts}
    params = _jitter(model.init(jax.random.key(0), batches["sparse"]))
    outs = {}
    for lay, b in batches.items():
        out = jax.jit(model.apply)(params, b)
        mask = np.asarray(b.nodes["mask"])
        outs[lay] = {k: (np.asarray(v)[: len(recs)] if v.shape[0] == graph.n_graphs(b)
                         else np.asarray(v)[mask]) for k, v in out.items()}
    for lay, out in outs.items():
        for k, v in out.items():
            np.testing.assert_allclose(v, outs["sparse"][k], rtol=2e-5, atol=2e-5,
                                       err_msg=f"{name}: {k} differs between sparse and {lay}")


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_undeclared_layout_raises_naming_model_and_layout(name):
    model = BUILT_IN[name]()
    if "dense" in model.graph.layouts:
        pytest.skip("declares both layouts")
    recs = _molecules([3, 4])
    params = model.init(jax.random.key(0), graph.batch(recs))
    with pytest.raises(ValueError, match=f"{model.name}.*'dense'"):
        model.apply(params, graph.batch(recs, layout="dense"))
    with pytest.raises(ValueError, match="not 'dense'"):
        graph.GraphLoader(recs, 2, layout="dense", model=model)
    assert graph.GraphLoader(recs, 2, layout="auto", model=model).layout == "sparse"


def test_painn_is_sparse_only():
    """PaiNN indexes senders/receivers itself: on the dense layout (each pair stored once)
    it would silently give wrong energies, so it must not declare that layout."""
    assert painn(PaiNNConfig(n_features=8)).graph.layouts == ("sparse",)


def test_alignn_declares_line_graphs():
    model = alignn(ALIGNNConfig(n_alignn_layers=1, n_gcn_layers=1, embedding=8, hidden=8,
                                n_bond_rbf=8, n_angle_rbf=8, cutoff=CUTOFF))
    assert model.graph.line_graph and model.graph.max_neighbors == 12
    atoms = ase.Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    plain = graph.batch(graph.records_from_atoms([atoms], CUTOFF))
    line = graph.batch(linegraph.records_from_atoms([atoms], CUTOFF))
    params = model.init(jax.random.key(0), line)
    with pytest.raises(ValueError, match="line graphs"):
        model.apply(params, plain)


# --------------------------------------------------------------------------- custom models
class SparsePairModel(nnx.Module):
    """A user's first model: pair energies from plain ``jnp.linalg.norm`` over the sparse
    edge list (segment_sum over receivers), no safe norm, masks multiplied in."""

    def __init__(self, rngs):
        self.w = nnx.Param(jnp.array([1.0, -0.5]))

    def __call__(self, batch):
        vec = graph.edge_vectors(batch)
        d = jnp.linalg.norm(vec, axis=-1)
        pair = self.w[...][0] * jnp.exp(-d) + self.w[...][1] / d
        e_atom = jax.ops.segment_sum(pair * batch.edges["mask"], batch.receivers,
                                     batch.nodes["mask"].shape[0])
        return {"energy": jax.ops.segment_sum(e_atom, batch.nodes["graph"],
                                              batch.n_node.shape[0])}


def test_custom_model_defaults_to_sparse_and_refuses_dense():
    model = protocol.from_nnx(SparsePairModel, name="pairs")
    assert model.graph.layouts == ("sparse",)
    recs = _molecules([3, 4])
    params = model.init(jax.random.key(0), None)
    with pytest.raises(ValueError, match="pairs supports the batch layouts \\['sparse'\\]"):
        model.apply(params, graph.batch(recs, layout="dense"))


def test_padding_edges_have_length_and_naive_model_trains_finite():
    recs = _molecules([3, 4, 5, 2, 3, 4])
    b = graph.batch(recs, graph.Budget(40, 64, 8))
    d = np.linalg.norm(np.asarray(graph.edge_vectors(graph.to_device(b))), axis=-1)
    pad = ~np.asarray(b.edges["mask"])
    assert pad.any() and np.all(d[pad] >= graph.PAD_DISTANCE - 1e-3)
    model = potential.potential(protocol.from_nnx(SparsePairModel), stress=False)
    params = model.init(jax.random.key(0), None)
    loss = train.energy_force_loss(1.0, 10.0)
    grads = jax.grad(lambda p: loss(model.apply(p, graph.to_device(b)), b)[0])(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    loader = graph.GraphLoader(recs, batch_size=2, seed=0)
    res = train.fit(model, params, loader, config=train.FitConfig(epochs=3, progress=False))
    assert all(np.isfinite(r["train_loss"]) for r in res.history)


def test_dense_padding_slots_are_apart():
    recs = _molecules([2, 5])
    b = graph.batch(recs, graph.Budget(3 * 5, 3 * 5 * 2, 3), layout="dense")
    d = np.linalg.norm(np.asarray(graph.edge_vectors(graph.to_device(b))), axis=-1)
    assert np.all(d > 0.5)  # no zero-length pair slot, padded or not


# --------------------------------------------------------------------------- labels
def _labelled(tmp_path, energy_key="REF_energy", forces_key="REF_forces"):
    rng = np.random.default_rng(0)
    frames = []
    for k in range(4):
        a = ase.Atoms("NH3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
        a.positions += rng.normal(scale=0.05, size=(4, 3))
        a.info[energy_key] = -19.5 + 0.1 * k
        a.arrays[forces_key] = rng.normal(size=(4, 3))
        frames.append(a)
    path = tmp_path / "data.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path, frames


def test_ref_keys_are_read_through_the_key_mapping(tmp_path):
    path, frames = _labelled(tmp_path)
    atoms = ase.io.read(path, ":")
    recs = graph.records_from_atoms(atoms, CUTOFF)
    for r, a in zip(recs, frames):
        assert r.targets["energy"] == pytest.approx(a.info["REF_energy"])
        np.testing.assert_allclose(r.node_targets["forces"], a.arrays["REF_forces"], atol=1e-8)
    explicit = graph.records_from_atoms(atoms, CUTOFF, energy_key="REF_energy",
                                        forces_key="REF_forces")
    assert explicit[2].targets["energy"] == recs[2].targets["energy"]


def test_absent_label_key_names_the_keys_found(tmp_path):
    path, _ = _labelled(tmp_path, "my_energy", "my_forces")
    atoms = ase.io.read(path, ":")
    with pytest.raises(ValueError, match="'dft_energy'.*my_energy"):
        graph.records_from_atoms(atoms, CUTOFF, energy_key="dft_energy")
    recs = graph.records_from_atoms(atoms, CUTOFF, energy_key="my_energy",
                                    forces_key="my_forces")
    assert "energy" in recs[0].targets and "forces" in recs[0].node_targets
