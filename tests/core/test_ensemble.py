"""Committees: vmapped init/apply/training equal the member-by-member loop; per-member data
order, early stopping, checkpoint/resume and sharding over several devices."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmat import data, engine, ensemble, graph, potential, train
from jaxmat.models import SchNetConfig, schnet
from jaxmat.models.layers import cosine_cutoff, gaussian_rbf
from jaxmat.core.protocol import Model, from_nnx

CUTOFF = 4.0


class PairEnergy(nnx.Module):
    """A user-defined NNX module: energy (eV) as a sum of learned pair terms."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, batch):
        d = graph.safe_norm(graph.edge_vectors(batch))
        e = self.l2(jnp.tanh(self.l1(gaussian_rbf(d, 8, CUTOFF))))[:, 0]
        e = e * cosine_cutoff(d, CUTOFF) * batch.edges["mask"]
        e_atom = jax.ops.segment_sum(e, batch.receivers, graph.n_nodes(batch)) * batch.nodes["mask"]
        return {"energy": graph.graph_sum(e_atom, batch)}


@pytest.fixture(scope="module")
def records():
    """40 NH3 geometries in random order (the file is ordered by geometry family)."""
    atoms = data.load_ammonia()
    pick = np.random.default_rng(0).permutation(len(atoms))[:40]
    return graph.records_from_atoms([atoms[k] for k in pick], CUTOFF)


@pytest.fixture(scope="module")
def schnet_pot():
    return potential.potential(schnet(SchNetConfig(n_features=16, n_interactions=1, n_rbf=8,
                                                   cutoff=CUTOFF)), stress=False)


@pytest.fixture(scope="module")
def pair_pot():
    return potential.potential(from_nnx(PairEnergy), stress=False)


@pytest.fixture(scope="module")
def val(records):
    return graph.GraphLoader(records[30:], 16, shuffle=False)


def _leaves(p):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(p)]


@pytest.mark.parametrize("which", ["schnet_pot", "pair_pot"])
def test_committee_of_one_equals_single_model(request, which, val):
    model = request.getfixturevalue(which)
    b = next(iter(val))
    p = model.init(jax.random.key(3), b)
    single = jax.jit(model.apply)(p, b)
    com = jax.jit(lambda q, x: ensemble.apply(model, q, x))(ensemble.stack([p]), b)
    st = ensemble.stats(com)
    for k in ("energy", "forces"):
        np.testing.assert_allclose(com[k][0], single[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st[f"{k}_mean"], single[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st[f"{k}_var"], 0.0, atol=1e-12)


@pytest.mark.parametrize("which", ["schnet_pot", "pair_pot"])
def test_vmapped_apply_equals_loop_and_members_differ(request, which, val):
    model = request.getfixturevalue(which)
    b = next(iter(val))
    params = ensemble.init(model, jax.random.key(0), b, 3)
    assert ensemble.size(params) == 3
    com = jax.jit(lambda q, x: ensemble.apply(model, q, x))(params, b)
    single = jax.jit(model.apply)
    for m in range(3):
        ref = single(ensemble.member(params, m), b)
        np.testing.assert_allclose(com["energy"][m], ref["energy"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(com["forces"][m], ref["forces"], rtol=1e-4, atol=1e-5)
    # different keys -> different members
    assert not np.allclose(com["energy"][0], com["energy"][1])
    st = ensemble.stats(com)
    np.testing.assert_allclose(st["forces_var_atom"], np.var(com["forces"], 0).sum(-1), rtol=1e-5)


def test_vmapped_step_equals_loop(schnet_pot, records):
    loss = train.energy_force_loss(1.0, 10.0)
    opt = train.make_optimizer(1e-2, 10)
    loader = ensemble.CommitteeLoader(records[:30], 3, batch_size=8, seed=1)
    b, active = next(loader.epoch(0))
    params = ensemble.init(schnet_pot, jax.random.key(1), graph.batch(records[:2]), 3)
    opt_state = jax.vmap(opt.init)(params)
    keys = jax.random.split(jax.random.key(0), 3)
    active = jnp.array([True, False, True])  # member 1 stopped: must not move
    step = jax.jit(ensemble.make_step(schnet_pot, loss, opt))
    new_p, new_s, value, _ = step(params, opt_state, b, keys, active)
    single = jax.jit(train.make_step(schnet_pot, loss, opt))
    for m in range(3):
        bm = jax.tree_util.tree_map(lambda x: x[m], b)
        pm, _, vm, _ = single(ensemble.member(params, m), ensemble.member(opt_state, m), bm, keys[m])
        np.testing.assert_allclose(value[m], vm, rtol=1e-5)
        expect = pm if bool(active[m]) else ensemble.member(params, m)
        for x, y in zip(_leaves(ensemble.member(new_p, m)), _leaves(expect)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert int(new_s[1][0].count[1]) == 0 and int(new_s[1][0].count[0]) == 1


def test_loader_orders_bootstrap_and_fixed_shapes(records):
    n = 30
    ld = ensemble.CommitteeLoader(records[:n], 4, batch_size=8, seed=0)
    orders = [ld.order(m, 0) for m in range(4)]
    assert all(sorted(o) == list(range(n)) for o in orders)  # permutations
    assert len({tuple(o) for o in orders}) == 4  # each member its own order
    assert not np.array_equal(ld.order(0, 0), ld.order(0, 1))  # reshuffled per epoch
    steps = list(ld.epoch(0))
    assert len(steps) == len(ld) == max(len(g) for g in ld.groups(0)[0])
    assert len(ensemble.CommitteeLoader(records[:n], 2, batch_size=8, seed=0)) >= 4
    shapes = {tuple(x.shape for x in jax.tree_util.tree_leaves(b)) for b, _ in steps}
    assert len(shapes) == 1 and next(iter(shapes))[0][0] == 4
    # every member sees every record exactly once over its active steps
    for m in range(4):
        n_graphs = sum(int(np.asarray(b.globals["mask"][m]).sum()) for b, a in steps if a[m])
        assert n_graphs == n
    bs = ensemble.CommitteeLoader(records[:n], 4, batch_size=8, seed=0, bootstrap=True)
    idx = [bs.member_indices(m) for m in range(4)]
    assert all(len(i) == n for i in idx)
    assert all(len(np.unique(i)) < n for i in idx)  # resampled with replacement
    assert not np.array_equal(idx[0], idx[1])


@pytest.mark.slow
def test_fit_schnet_committee_improves_every_member(schnet_pot, records, val):
    loss = train.energy_force_loss(1.0, 10.0)
    p0 = ensemble.init(schnet_pot, jax.random.key(0), graph.batch(records[:2]), 2)
    full = ensemble.fit(schnet_pot, p0, records[:30], val, loss,
                        ensemble.CommitteeConfig(epochs=3, lr=5e-3, batch_size=10, progress=False))
    first, last = full.history[0]["val_loss"], full.history[-1]["val_loss"]
    assert len(first) == 2 and all(b < a for a, b in zip(first, last))
    assert full.best_epoch == [3, 3]
    ev = ensemble.evaluate(schnet_pot, full.params, val, loss)
    np.testing.assert_allclose(ev["loss"], full.best_metric, rtol=1e-5)


def test_fit_data_order_separates_members_and_resume(pair_pot, records, val, tmp_path):
    loss = train.energy_force_loss(1.0, 10.0)
    p0 = ensemble.init(pair_pot, jax.random.key(0), graph.batch(records[:2]), 2)
    # starting both members from the same params, data order alone makes them differ
    same = ensemble.stack([ensemble.member(p0, 0)] * 2)
    res = ensemble.fit(pair_pot, same, records[:30], None, loss,
                       ensemble.CommitteeConfig(epochs=1, lr=5e-3, batch_size=10, progress=False))
    a, b = (_leaves(ensemble.member(res.params, m)) for m in range(2))
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) > 1e-4
    # resume: 2 epochs, then the 3rd in a second call == 3 epochs in one go
    kw = dict(epochs=3, lr=5e-3, batch_size=10, progress=False)
    full = ensemble.fit(pair_pot, p0, records[:30], val, loss, ensemble.CommitteeConfig(**kw))
    first, last = full.history[0]["val_loss"], full.history[-1]["val_loss"]
    assert len(first) == 2 and all(b < a for a, b in zip(first, last))
    ev = ensemble.evaluate(pair_pot, full.params, val, loss)
    np.testing.assert_allclose(ev["loss"], full.best_metric, rtol=1e-5)
    cfg = ensemble.CommitteeConfig(**kw, checkpoint_dir=str(tmp_path / "ck"))
    part = ensemble.fit(pair_pot, p0, records[:30], val, loss, cfg, max_epochs=2)
    assert len(part.history) == 2
    rest = ensemble.fit(pair_pot, p0, records[:30], val, loss, cfg)
    assert len(rest.history) == 3
    for x, y in zip(_leaves(rest.last_params), _leaves(full.last_params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(_leaves(rest.params), _leaves(full.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert rest.best_epoch == full.best_epoch
    assert os.path.exists(tmp_path / "ck" / "metrics.csv")


def test_first_members_of_a_larger_committee_are_the_smaller_committee(pair_pot, records, val):
    """Member m's init key, data order and per-step keys depend on m only, so a committee of
    k trained alone equals the first k members of a committee of n (a size curve needs one
    run)."""
    loss = train.energy_force_loss(1.0, 10.0)
    cfg = ensemble.CommitteeConfig(epochs=2, lr=5e-3, batch_size=10, progress=False)
    ex = graph.batch(records[:2])
    big = ensemble.fit(pair_pot, ensemble.init(pair_pot, jax.random.key(3), ex, 3),
                       records[:30], val, loss, cfg)
    small = ensemble.fit(pair_pot, ensemble.init(pair_pot, jax.random.key(3), ex, 2),
                         records[:30], val, loss, cfg)
    for x, y in zip(_leaves(big.params), _leaves(small.params)):
        np.testing.assert_allclose(x[:2], y, rtol=1e-5, atol=1e-6)
    assert max(np.abs(x[2] - x[0]).max() for x in _leaves(big.params)) > 1e-4


def test_early_stopping_freezes_members(pair_pot, records, val):
    loss = train.energy_force_loss(1.0, 10.0)
    p0 = ensemble.init(pair_pot, jax.random.key(2), graph.batch(records[:2]), 2)
    # a huge learning rate makes validation worse after the first epoch -> stop with patience 1
    cfg = ensemble.CommitteeConfig(epochs=6, lr=0.5, lr_end=0.5, batch_size=10, patience=1,
                                   progress=False)
    res = ensemble.fit(pair_pot, p0, records[:30], val, loss, cfg)
    assert all(res.stopped_early)
    assert len(res.history) < 6
    # returned params are each member's best; re-evaluating reproduces the best metric
    ev = ensemble.evaluate(pair_pot, res.params, val, loss)
    np.testing.assert_allclose(ev["loss"], res.best_metric, rtol=1e-5)


def test_fit_on_fixed_batches_with_user_module(records):
    """A plain list of same-shape batches: each member permutes whole batches."""
    model = from_nnx(PairEnergy)
    budget = graph.estimate_budget(records[:30], 10)
    batches = [graph.batch(records[k:k + 10], budget) for k in (0, 10, 20)]
    loss = train.target_loss("energy", per_atom=True)
    p0 = ensemble.init(model, jax.random.key(0), batches[0], 3)
    res = ensemble.fit(model, p0, batches, batches, loss,
                       ensemble.CommitteeConfig(epochs=2, lr=1e-2, progress=False))
    assert np.all(np.isfinite(res.best_metric))
    assert len(res.history[0]["val_energy_mae_eV_per_atom"]) == 3
    assert "val_committee_energy_mae_eV_per_atom" in res.history[0]


def test_is_committee_tells_members_from_a_single_model(pair_pot, records):
    b = graph.batch(records[:4])
    single = pair_pot.init(jax.random.key(0), b)
    committee = ensemble.init(pair_pot, jax.random.key(0), b, 3)
    assert ensemble.is_committee(pair_pot, committee, b) is True
    assert ensemble.is_committee(pair_pot, single, b) is False
    with pytest.raises(ValueError, match="neither"):  # one axis too many on every leaf
        ensemble.is_committee(pair_pot, jax.tree_util.tree_map(lambda x: x[None], committee), b)
    with pytest.raises(ValueError, match="arrays"):
        ensemble.is_committee(pair_pot, {"w": jnp.zeros(3)}, b)


def test_bad_input(pair_pot, records, val):
    b = next(iter(val))
    with pytest.raises(ValueError, match="committee size"):
        ensemble.init(pair_pot, jax.random.key(0), b, 0)
    with pytest.raises(ValueError, match="committee size"):
        ensemble.CommitteeLoader(records, 0)
    p = ensemble.stack([pair_pot.init(jax.random.key(k), b) for k in range(2)])
    leaves, tree = jax.tree_util.tree_flatten(p)
    leaves[0] = leaves[0][:1]
    with pytest.raises(ValueError, match="leading member axis"):
        ensemble.apply(pair_pot, jax.tree_util.tree_unflatten(tree, leaves), b)
    with pytest.raises(ValueError, match="cannot stack"):
        ensemble.stack([ensemble.member(p, 0), {"other": jnp.zeros(3)}])
    with pytest.raises(ValueError, match="empty"):
        ensemble.stack([])
    out = {"energy": np.zeros((3, 4)), "forces": np.zeros((3, 5, 3))}
    assert ensemble.check_finite(out) is out
    out["forces"][2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*'forces'.*\[2\]"):
        ensemble.check_finite(out)
    with pytest.raises(ValueError, match="3 members"):
        ensemble.fit(pair_pot, p, ensemble.CommitteeLoader(records[:10], 3), None)
    with pytest.raises(ValueError, match="divisible"):
        ensemble.shard_members(ensemble.stack([ensemble.member(p, 0)] * 3),
                               ensemble.member_mesh(jax.devices() * 2))


_SHARD_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxmat import data, ensemble, graph, potential, train
    from jaxmat.models import SchNetConfig, schnet
    assert len(jax.devices()) == 4, jax.devices()
    recs = graph.records_from_atoms(data.load_ammonia()[:24], 4.0)
    model = potential.potential(schnet(SchNetConfig(n_features=8, n_interactions=1, n_rbf=8,
                                                    cutoff=4.0)), stress=False)
    loss = train.energy_force_loss(1.0, 10.0)
    opt = train.make_optimizer(1e-2, 10)
    ld = ensemble.CommitteeLoader(recs, 4, batch_size=8, seed=0)
    b, act = next(ld.epoch(0))
    params = ensemble.init(model, jax.random.key(0), graph.batch(recs[:2]), 4)
    state = jax.vmap(opt.init)(params)
    keys = jax.random.split(jax.random.key(1), 4)
    val = graph.batch(recs[:8])
    step = jax.jit(ensemble.make_step(model, loss, opt))
    apply = jax.jit(lambda p, x: ensemble.apply(model, p, x))
    mesh = ensemble.member_mesh()
    out = {}
    for name, put in (("plain", lambda t: t), ("sharded", lambda t: ensemble.shard_members(t, mesh))):
        p, s = put(params), put(state)
        pred = apply(p, val)
        p2, _, value, _ = step(p, s, put(b), put(keys), put(jnp.asarray(act)))
        leaf = jax.tree_util.tree_leaves(p2)[0]
        out[name] = {"energy": np.asarray(pred["energy"]).tolist(),
                     "forces": np.asarray(pred["forces"]).ravel().tolist(),
                     "loss": np.asarray(value).tolist(),
                     "params": np.concatenate([np.asarray(x).ravel()
                                               for x in jax.tree_util.tree_leaves(p2)]).tolist(),
                     "n_shards": len(leaf.sharding.device_set),
                     "pred_shards": len(pred["energy"].sharding.device_set)}
    json.dump(out, sys.stdout)
""")


@pytest.mark.slow  # 30 s; by default tests/core/test_parallel.py runs a committee on 4 devices
def test_sharded_committee_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    plain, sharded = out["plain"], out["sharded"]
    assert plain["n_shards"] == 1 and sharded["n_shards"] == 4 and sharded["pred_shards"] == 4
    for k in ("energy", "forces", "loss", "params"):
        np.testing.assert_allclose(sharded[k], plain[k], rtol=2e-5, atol=1e-6)


def test_fitted_committee_of_one_equals_train_fit(pair_pot, records, val):
    """A single model is a committee of one: same seed and data order, same numbers."""
    loss = train.energy_force_loss(1.0, 10.0)
    p = pair_pot.init(jax.random.key(5), graph.batch(records[:2]))
    tl = graph.GraphLoader(records[:30], 10, shuffle=False)
    cfg = dict(epochs=3, lr=5e-3, warmup_epochs=1, progress=False, seed=4)
    single = train.fit(pair_pot, p, tl, val, loss, train.FitConfig(**cfg))
    com = ensemble.fit(pair_pot, ensemble.stack([p]), tl, val, loss,
                       ensemble.CommitteeConfig(**cfg))
    for a, b in ((single.params, com.params), (single.last_params, com.last_params)):
        for x, y in zip(_leaves(a), _leaves(b)):
            np.testing.assert_allclose(x, y[0], rtol=1e-6, atol=1e-7)
    assert max(np.abs(x - y).max() for x, y in zip(_leaves(p), _leaves(single.params))) > 1e-3
    assert [single.best_epoch] == com.best_epoch
    np.testing.assert_allclose([h["val_loss"] for h in single.history],
                               [h["val_loss"][0] for h in com.history], rtol=1e-6)


TRACES = []


def counting(model):
    """``model`` with an ``apply`` that records each trace (a Python side effect)."""

    def apply(params, batch):
        TRACES.append(1)
        return model.apply(params, batch)

    return Model(model.init, apply, name="counting")


def test_generations_compile_the_step_once(pair_pot, records, val):
    """ensemble.fit once per generation (more data, more epochs, a new but equal loss each
    time) on fixed shapes traces and compiles its step and its evaluation once."""
    model = counting(pair_pot)
    budget = graph.estimate_budget(records, 10)
    params = ensemble.init(model, jax.random.key(0), graph.batch(records[:2]), 2)
    TRACES.clear()
    for gen in range(5):
        loader = ensemble.CommitteeLoader(records[:20 + 2 * gen], 2, 10, budget, seed=gen)
        cfg = ensemble.CommitteeConfig(epochs=1 + gen, lr=5e-3, progress=False, seed=gen)
        res = ensemble.fit(model, params, loader, val, train.energy_force_loss(1.0, 10.0), cfg)
        params = res.params
        assert len(res.history) == 1 + gen
    step = engine.compiled_step(model, train.energy_force_loss(1.0, 10.0), 10.0, None)
    assert step._cache_size() == 1
    assert engine.compiled_eval(model, train.energy_force_loss(1.0, 10.0))._cache_size() == 1
    assert len(TRACES) == 2  # one trace of the step, one of the evaluation
