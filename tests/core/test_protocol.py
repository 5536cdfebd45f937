"""User-defined Flax NNX and Linen modules plug into the same init/apply protocol and fit loop."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmat import data, graph, potential, train
from jaxmat.models.layers import cosine_cutoff, gaussian_rbf
from jaxmat.core.protocol import Model, count_params, from_linen, from_nnx

CUTOFF = 4.0


# --------------------------------------------------------------------------- user modules
class PairEnergy(nnx.Module):
    """Site energies plus a learned, species-dependent pair potential (eV), over a graph batch."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8, n_rbf: int = 8, dropout: float = 0.0):
        self.n_rbf = n_rbf
        self.embed = nnx.Embed(119, width, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.site = nnx.Linear(width, 1, rngs=rngs)
        self.radial = nnx.Linear(n_rbf, width, rngs=rngs)

    def __call__(self, b):
        d = graph.safe_norm(graph.edge_vectors(b))
        h = self.embed(b.nodes["species"])
        radial = self.radial(gaussian_rbf(d, self.n_rbf, CUTOFF))
        if self.drop is not None:
            radial = self.drop(radial)
        pair = jnp.sum(h[b.senders] * h[b.receivers] * radial, axis=-1)
        pair = pair * cosine_cutoff(d, CUTOFF) * b.edges["mask"]
        e = self.site(h)[:, 0] + 0.5 * jax.ops.segment_sum(pair, b.receivers, h.shape[0])
        return {"energy": graph.graph_sum(e * b.nodes["mask"], b)}


class DropoutMLP(nnx.Module):
    """x (B, 3) -> {"target": (B,)} with dropout between the layers."""

    def __init__(self, rngs: nnx.Rngs, rate: float = 0.5):
        self.l1 = nnx.Linear(3, 32, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.l2 = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, batch):
        return {"target": self.l2(self.drop(nnx.relu(self.l1(batch["x"]))))[:, 0]}


class LinenMLP(nn.Module):
    """x (B, 3) -> {"target": (B,)}; optional dropout."""

    width: int = 16
    rate: float = 0.0

    @nn.compact
    def __call__(self, batch, deterministic: bool = True):
        h = nn.tanh(nn.Dense(self.width)(batch["x"]))
        if self.rate:
            h = nn.Dropout(self.rate)(h, deterministic=deterministic)
        return {"target": nn.Dense(1)(h)[:, 0]}


# --------------------------------------------------------------------------- data
def regression_batches(n_batches: int = 4, size: int = 16, n_pad: int = 3, seed: int = 0):
    """Dict batches for y = sin(x·w); the last ``n_pad`` rows are padding with junk targets."""
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -2.0, 0.5])
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(size, 3)).astype(np.float32)
        y = np.sin(x @ w).astype(np.float32)
        mask = np.arange(size) < size - n_pad
        y[~mask] = 1e3
        out.append({"x": x, "target": y, "mask": mask})
    return out


def fit_cfg(epochs: int, lr: float) -> train.FitConfig:
    return train.FitConfig(epochs=epochs, lr=lr, lr_end=lr / 10, progress=False)


# --------------------------------------------------------------------------- NNX
def test_nnx_pair_potential_trains_through_fit():
    recs = graph.records_from_atoms(data.load_ammonia()[:32], CUTOFF)
    loader = graph.GraphLoader(recs, batch_size=8, seed=0)
    model = potential.potential(from_nnx(PairEnergy), stress=False)
    assert model.name == "PairEnergy"
    params = model.init(jax.random.key(0), next(iter(loader)))
    assert count_params(params) == 119 * 8 + (8 + 1) + (8 * 8 + 8)
    out = jax.jit(model.apply)(params, next(iter(loader)))
    assert out["energy"].shape == (loader.budget.n_graph,) and out["forces"].shape[1] == 3
    res = train.fit(model, params, loader, None, train.energy_force_loss(1.0, 10.0), fit_cfg(8, 5e-2))
    losses = [h["train_loss"] for h in res.history]
    # a pair potential cannot fit NH3's angular forces; it must still improve steadily
    assert losses[-1] < 0.85 * losses[0] and losses[-1] < min(losses[:4])
    assert res.history[-1]["train_energy_mae_eV_per_atom"] < 0.5 * res.history[0]["train_energy_mae_eV_per_atom"]
    # params are plain nested dicts of arrays, with the module's structure
    assert set(res.params) == {"embed", "site", "radial"}
    assert res.params["site"]["kernel"].shape == (8, 1)


def test_nnx_init_depends_on_key_only():
    model = from_nnx(PairEnergy)
    a, b = model.init(jax.random.key(1), None), model.init(jax.random.key(1), None)
    c = model.init(jax.random.key(2), None)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                    jax.tree_util.tree_leaves(b)))
    assert not np.array_equal(a["embed"]["embedding"], c["embed"]["embedding"])


def test_nnx_dropout_is_stochastic_in_training_only():
    model = from_nnx(DropoutMLP)
    assert model.apply_train is not None
    batch = regression_batches(1)[0]
    params = model.init(jax.random.key(0), batch)
    apply = jax.jit(model.apply)
    train_apply = jax.jit(model.train_apply)
    ref = np.asarray(apply(params, batch)["target"])
    np.testing.assert_array_equal(np.asarray(apply(params, batch)["target"]), ref)
    # eval mode equals the network without dropout, written out by hand
    h = np.maximum(batch["x"] @ params["l1"]["kernel"] + params["l1"]["bias"], 0.0)
    by_hand = (h @ params["l2"]["kernel"] + params["l2"]["bias"])[:, 0]
    np.testing.assert_allclose(ref, by_hand, rtol=1e-5, atol=1e-6)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    t1 = np.asarray(train_apply(params, batch, k1)["target"])
    np.testing.assert_array_equal(np.asarray(train_apply(params, batch, k1)["target"]), t1)
    t2 = np.asarray(train_apply(params, batch, k2)["target"])
    assert not np.allclose(t1, t2) and not np.allclose(t1, ref)
    # the training path runs through fit and still learns
    batches = regression_batches()
    res = train.fit(model, params, batches, None, train.target_loss("target"), fit_cfg(30, 1e-2))
    assert res.history[-1]["train_loss"] < 0.7 * res.history[0]["train_loss"]


def test_potential_keeps_training_mode_with_consistent_forces():
    energy_model = from_nnx(lambda rngs: PairEnergy(rngs, dropout=0.5))
    model = potential.potential(energy_model, stress=False)
    assert model.apply_train is not None
    b = graph.to_device(graph.batch(graph.records_from_atoms(data.load_ammonia()[:2], CUTOFF)))
    params = model.init(jax.random.key(0), b)
    key = jax.random.key(7)
    out = model.train_apply(params, b, key)
    # forces in training mode are the gradient of the same (dropped-out) energy
    e = lambda pos: jnp.sum(energy_model.apply_train(  # noqa: E731
        params, b._replace(nodes={**b.nodes, "positions": pos}), key)["energy"] * b.globals["mask"])
    ref = -jax.grad(e)(b.nodes["positions"]) * b.nodes["mask"][:, None]
    np.testing.assert_allclose(out["forces"], ref, rtol=1e-5, atol=1e-6)
    other = model.train_apply(params, b, jax.random.key(8))
    assert not np.allclose(out["energy"], other["energy"])
    evals = model.apply(params, b)
    np.testing.assert_array_equal(evals["energy"], model.apply(params, b)["energy"])
    assert not np.allclose(out["forces"], evals["forces"])


def test_model_without_dropout_has_no_train_apply():
    model = from_nnx(PairEnergy)
    assert model.apply_train is None
    assert hash(model) == hash(model)  # usable as a static jit argument


# --------------------------------------------------------------------------- Linen
def test_linen_mlp_trains_through_fit():
    batches = regression_batches()
    model = from_linen(LinenMLP())
    assert isinstance(model, Model) and model.apply_train is None
    params = model.init(jax.random.key(0), batches[0])
    assert count_params(params) == 3 * 16 + 16 + 16 + 1
    loss = train.target_loss("target")
    res = train.fit(model, params, batches, batches[:1], loss, fit_cfg(40, 2e-2))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.3 * losses[0]
    # padding rows (junk targets 1e3) do not enter the loss or the metric
    ev = train.evaluate(model, res.params, batches[:1], loss)
    pred = np.asarray(model.apply(res.params, batches[0])["target"])
    m = batches[0]["mask"]
    np.testing.assert_allclose(ev["target_mae"], np.abs(pred - batches[0]["target"])[m].mean(),
                               rtol=1e-5)
    assert ev["target_mae"] < 1.0


def test_linen_dropout():
    batch = regression_batches(1)[0]
    model = from_linen(LinenMLP(rate=0.5), dropout=True)
    params = model.init(jax.random.key(0), batch)
    ref = np.asarray(model.apply(params, batch)["target"])
    np.testing.assert_array_equal(np.asarray(model.apply(params, batch)["target"]), ref)
    t1 = np.asarray(model.train_apply(params, batch, jax.random.key(1))["target"])
    t2 = np.asarray(model.train_apply(params, batch, jax.random.key(2))["target"])
    assert not np.allclose(t1, t2) and not np.allclose(t1, ref)


def test_count_params():
    assert count_params({"a": np.zeros((3, 4)), "b": [np.zeros(5), np.zeros(())]}) == 18
    assert count_params({}) == 0


# --------------------------------------------------------------------------- running state
def test_batchnorm_raises_clearly_under_both_adapters():
    """BatchNorm's running statistics cannot live in a pure params pytree: both adapters
    refuse such modules with an error that names the state, instead of freezing it (NNX)
    or failing deep inside Linen with ScopeCollectionNotFound."""
    import flax.linen as nn
    from flax import nnx

    from jaxmat.core.protocol import from_linen, from_nnx

    class NNXNorm(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.lin(x))

    class LinenNorm(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic=True):
            return nn.BatchNorm(use_running_average=deterministic)(nn.Dense(4)(x))

    with pytest.raises(ValueError, match="NNXNorm has layers with running state.*BatchStat"):
        from_nnx(NNXNorm)
    model = from_linen(LinenNorm())
    with pytest.raises(ValueError, match="LinenNorm has layers with running state.*batch_stats"):
        model.init(jax.random.key(0), jnp.ones((2, 3)))

    class LinenLayerNorm(nn.Module):  # stateless normalisation works
        @nn.compact
        def __call__(self, x):
            return nn.LayerNorm()(nn.Dense(4)(x))

    m = from_linen(LinenLayerNorm())
    assert m.apply(m.init(jax.random.key(0), jnp.ones((2, 3))), jnp.ones((2, 3)))["output"].shape == (2, 4)
