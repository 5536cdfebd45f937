"""Training loop: loss decreases, checkpoints, exact resume, early stopping, logs, metrics."""
from __future__ import annotations

import csv
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat import checkpoint, data, graph, potential, train
from jaxmat.models import SchNetConfig, schnet
from jaxmat.core.protocol import Model

CUTOFF = 4.0
EPOCHS = 6


def tree_equal(a, b, atol=0.0) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=0, atol=atol) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def setup():
    recs = graph.records_from_atoms(data.load_ammonia()[:48], CUTOFF)
    tr, va = recs[:32], recs[32:]
    refs, _ = potential.fit_energy_stats([r.numbers for r in tr], [r.targets["energy"] for r in tr])
    f_rms = float(np.sqrt(np.mean(np.concatenate([r.node_targets["forces"] for r in tr]) ** 2)))
    cfg = SchNetConfig(n_features=16, n_interactions=1, n_rbf=16, cutoff=CUTOFF).with_stats(refs, f_rms)
    model = potential.potential(schnet(cfg), stress=False)
    train_loader = graph.GraphLoader(tr, batch_size=8, seed=1)
    val_loader = graph.GraphLoader(va, batch_size=8, shuffle=False)
    params = model.init(jax.random.key(0), next(iter(train_loader)))
    loss = train.energy_force_loss(1.0, 10.0)
    return model, params, train_loader, val_loader, loss, va


def config(**kw) -> train.FitConfig:
    base = dict(epochs=EPOCHS, lr=2e-2, lr_end=1e-4, progress=False, seed=3)
    base.update(kw)
    return train.FitConfig(**base)


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    """One uninterrupted run of EPOCHS epochs with checkpoints (and its directory)."""
    model, params, tl, vl, loss, _ = setup
    d = str(tmp_path_factory.mktemp("straight"))
    res = train.fit(model, params, tl, vl, loss, config(checkpoint_dir=d))
    return res, d


def test_loss_decreases(setup, straight):
    res, _ = straight
    h = res.history
    assert len(h) == EPOCHS and [r["epoch"] for r in h] == list(range(1, EPOCHS + 1))
    assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    assert res.best_metric == min(r["val_loss"] for r in h)
    assert h[res.best_epoch - 1]["val_loss"] == res.best_metric
    assert not res.stopped_early


def test_fit_leaves_the_callers_params_usable(setup, straight):
    _, params, *_ = setup
    # fit donates buffers inside its jitted step; the caller's initial params must survive
    leaves = jax.tree_util.tree_leaves(params)
    assert not any(x.is_deleted() for x in leaves if hasattr(x, "is_deleted"))
    assert not tree_equal(params, straight[0].last_params)


def test_resume_in_slices_equals_straight_run(setup, straight, tmp_path):
    model, params, tl, vl, loss, _ = setup
    res_full, _ = straight
    d = str(tmp_path / "sliced")
    first = train.fit(model, params, tl, vl, loss, config(checkpoint_dir=d), max_epochs=EPOCHS // 2)
    assert len(first.history) == EPOCHS // 2
    assert not tree_equal(first.last_params, res_full.last_params, atol=1e-6)
    # a fresh call (different initial params passed in) resumes from the checkpoint
    other = model.init(jax.random.key(99), None)
    second = train.fit(model, other, tl, vl, loss, config(checkpoint_dir=d))
    assert len(second.history) == EPOCHS
    assert tree_equal(second.last_params, res_full.last_params, atol=1e-6)
    assert tree_equal(second.params, res_full.params, atol=1e-6)
    assert second.best_epoch == res_full.best_epoch
    np.testing.assert_allclose([r["train_loss"] for r in second.history],
                               [r["train_loss"] for r in res_full.history], rtol=1e-5)
    # the metrics log continues across the two calls: one row per epoch
    with open(os.path.join(d, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    # a third call has nothing left to do
    third = train.fit(model, other, tl, vl, loss, config(checkpoint_dir=d))
    assert len(third.history) == EPOCHS and tree_equal(third.last_params, second.last_params)


def test_metrics_csv_has_one_row_per_epoch(straight):
    res, d = straight
    with open(os.path.join(d, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == EPOCHS
    assert {"epoch", "train_loss", "val_loss", "val_energy_mae_eV_per_atom",
            "val_forces_mae_eV_per_A", "lr", "steps"} <= set(rows[0])
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows],
                               [r["val_loss"] for r in res.history], rtol=1e-6)


def test_load_params_reads_fit_directory(setup, straight):
    _, params, *_ = setup
    res, d = straight
    best, meta = checkpoint.load_params(d, params)  # best params by default
    assert tree_equal(best, res.params)
    assert meta["best_epoch"] == res.best_epoch
    last, _ = checkpoint.load_params(d, params, key="params")
    assert tree_equal(last, res.last_params)
    with pytest.raises(ValueError, match="no 'nope'"):
        checkpoint.load_params(d, params, key="nope")


def test_checkpoint_round_trip(setup, tmp_path):
    _, params, *_ = setup
    d = tmp_path / "ckpt"
    path = checkpoint.save_params(d, params, {"note": "init", "cutoff": CUTOFF})
    assert os.path.isabs(path)
    loaded, meta = checkpoint.load_params(d, params)
    assert tree_equal(loaded, params)
    assert meta == {"note": "init", "cutoff": CUTOFF}
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(loaded))
    # a second save is a new step; the latest is loaded, the first is kept
    shifted = jax.tree_util.tree_map(lambda x: x + 1, params)
    checkpoint.save_params(d, shifted, {"note": "second"})
    loaded, meta = checkpoint.load_params(d, params)
    assert tree_equal(loaded, shifted) and meta["note"] == "second"
    with checkpoint.Checkpointer(d) as ck:
        _, state, meta = ck.restore({"params": params}, step=1)
    assert tree_equal(state["params"], params) and meta["note"] == "init"
    with pytest.raises(FileNotFoundError):
        checkpoint.load_params(tmp_path / "missing", params)


def per_atom_model() -> Model:
    """E = w * n_atoms, F = 0: a cheap model for testing the loop's bookkeeping."""

    def apply(params, b):
        return {"energy": params["w"] * b.globals["n_atoms"],
                "forces": jnp.zeros_like(b.nodes["positions"])}

    return Model(lambda key, b: {"w": jnp.zeros(())}, apply)


def test_early_stopping(setup, tmp_path):
    _, _, tl, vl, loss, _ = setup
    model = per_atom_model()
    params = model.init(None, None)
    # with a zero learning rate the validation loss never improves after epoch 1
    cfg = config(epochs=50, lr=0.0, lr_end=0.0, patience=2, checkpoint_dir=str(tmp_path))
    res = train.fit(model, params, tl, vl, loss, cfg)
    assert res.stopped_early
    assert len(res.history) == 3 and res.best_epoch == 1
    assert tree_equal(res.last_params, params)
    # a run that stopped early stays stopped when called again
    again = train.fit(model, params, tl, vl, loss, cfg)
    assert again.stopped_early and len(again.history) == 3


def test_evaluate_mae_matches_hand_computation(setup, straight):
    model, _, _, vl, loss, va = setup
    params = straight[0].params
    metrics = train.evaluate(model, params, vl, loss)
    apply = jax.jit(model.apply)
    e_err, f_err = [], []
    for rec in va:  # each structure alone, no padding beyond the minimal one
        out = apply(params, graph.batch([rec]))
        e_err.append(abs(float(out["energy"][0]) - rec.targets["energy"]) / rec.n_node)
        f_err.append(np.abs(np.asarray(out["forces"])[: rec.n_node] - rec.node_targets["forces"]))
    np.testing.assert_allclose(metrics["energy_mae"], np.mean(e_err), rtol=1e-4)
    np.testing.assert_allclose(metrics["forces_mae"], np.mean(np.concatenate(f_err)), rtol=1e-4)
    assert metrics["energy_mae"] > 0 and metrics["forces_mae"] > 0


def test_evaluate_loss_weights_batches_by_size(setup):
    """16 structures in batches of 5, 5, 5, 1 give the loss of one batch of all 16 (every
    ammonia graph has 4 atoms, so the loss is a plain mean over graphs)."""
    model, params, _, _, loss, va = setup
    split = train.evaluate(model, params, graph.GraphLoader(va, 5, shuffle=False), loss)
    whole = train.evaluate(model, params, [graph.batch(va)], loss)
    np.testing.assert_allclose(split["loss"], whole["loss"], rtol=1e-5)
    unweighted = np.mean([float(loss(model.apply(params, b), b)[0])
                          for b in graph.GraphLoader(va, 5, shuffle=False).epoch(0)])
    assert abs(unweighted - whole["loss"]) > 1e-3 * whole["loss"]  # the case is not trivial


def test_metrics_with_labels_on_some_structures():
    """Stress only on training entries of mlearn: MAE over the labelled ones, any batch order."""
    atoms = [a for a in data.load_mlearn("Li", "all") if len(a) <= 6]
    recs = graph.records_from_atoms(atoms, 3.0)
    has = np.array(["stress" in r.targets for r in recs])
    assert has.any() and not has.all()

    def apply(params, b):  # predicts zero everywhere
        return {"energy": jnp.zeros_like(b.globals["n_atoms"]),
                "forces": jnp.zeros_like(b.nodes["positions"]),
                "stress": jnp.zeros_like(b.globals["cell"])}

    zero = Model(lambda k, b: {}, apply)
    loss = train.energy_force_loss(1.0, 1.0, stress=1.0)
    expected = np.mean([np.abs(r.targets["stress"]).mean() for r in recs if "stress" in r.targets])
    loader = graph.GraphLoader(recs, batch_size=3, seed=0)
    for epoch in range(3):
        m = train.evaluate(zero, {}, loader.epoch(epoch), loss)
        np.testing.assert_allclose(m["stress_mae"], expected, rtol=1e-5)


# --------------------------------------------------------------------------- engine features
def test_losses_are_hashable_values():
    assert train.energy_force_loss(1.0, 10.0) == train.energy_force_loss(1.0, 10.0)
    assert hash(train.energy_force_loss()) == hash(train.energy_force_loss())
    assert train.energy_force_loss(1.0, 10.0) != train.energy_force_loss(1.0, 5.0)
    assert train.target_loss("y") == train.target_loss("y") != train.target_loss("z")
    assert train.energy_force_loss(1.0, 0.0).targets == ("energy",)
    assert train.energy_force_loss(1.0, 1.0, 1.0).targets == ("energy", "forces", "stress")
    with pytest.raises(ValueError, match="huber"):
        train.energy_force_loss(kind="l1")
    with pytest.raises(ValueError, match="non-zero weight"):
        train.energy_force_loss(0.0, 0.0)


def padded_batch_with_nan_outputs():
    """A batch of 3 Li structures padded to a budget, outputs = targets + 0.1 on real
    entries and NaN on every padded one (graphs, atoms)."""
    atoms = [a for a in data.load_mlearn("Li", "all") if len(a) <= 6][:3]
    recs = graph.records_from_atoms(atoms, 3.0)
    budget = graph.Budget(sum(r.n_node for r in recs) + 5, sum(r.n_edge for r in recs) + 8, 5)
    b = graph.to_device(graph.batch(recs, budget))
    gm, nm = b.globals["mask"], b.nodes["mask"]
    out = {"energy": jnp.where(gm, b.globals["energy"] + 0.1, jnp.nan),
           "forces": jnp.where(nm[:, None], b.nodes["forces"] + 0.1, jnp.nan),
           "stress": jnp.where(gm[:, None, None], 0.1, jnp.nan)}
    return b, out


@pytest.mark.parametrize("loss", [train.energy_force_loss(1.0, 10.0, 1.0),
                                  train.energy_force_loss(1.0, 10.0, 1.0, kind="huber", delta=0.05),
                                  train.target_loss("energy", per_atom=True)])
def test_nan_in_padding_cannot_poison_loss_or_gradient(loss):
    b, out = padded_batch_with_nan_outputs()
    assert not bool(jnp.all(b.globals["mask"])) and not bool(jnp.all(b.nodes["mask"]))
    value, stats = loss(out, b)
    grads = jax.grad(lambda o: loss(o, b)[0])(out)
    assert np.isfinite(float(value)) and float(value) > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert all(np.isfinite(float(s)) and np.isfinite(float(c)) for s, c in stats.values())
    # padded entries get exactly zero gradient
    assert float(jnp.abs(grads["energy"][~b.globals["mask"]]).sum()) == 0.0
    if "forces" in grads:
        assert float(jnp.abs(grads["forces"][~b.nodes["mask"]]).sum()) == 0.0


def test_huber_is_squared_error_then_linear():
    b, out = padded_batch_with_nan_outputs()
    n = int(b.globals["mask"].sum())
    e_err = np.zeros(b.globals["mask"].shape)
    e_err[:n] = [0.01, 0.2, -0.5][:n]
    out = {**out, "energy": jnp.where(b.globals["mask"], b.globals["energy"]
                                      + e_err * b.globals["n_atoms"], jnp.nan)}
    d = 0.1
    huber, _ = train.energy_force_loss(1.0, 0.0, kind="huber", delta=d)(out, b)
    mse, _ = train.energy_force_loss(1.0, 0.0)(out, b)
    a = np.abs(e_err[:n])
    expect = np.where(a <= d, a**2, 2 * d * a - d**2).mean()
    np.testing.assert_allclose(float(huber), expect, rtol=1e-5)
    np.testing.assert_allclose(float(mse), (a**2).mean(), rtol=1e-5)


def test_missing_targets_raise_with_the_keys_found(setup):
    model, params, tl, vl, loss, va = setup
    no_forces = [dataclasses.replace(r, node_targets={}) for r in va]
    with pytest.raises(ValueError, match=r"needs target\(s\) \['forces'\].*training.*\['energy'\]"):
        train.fit(model, params, graph.GraphLoader(no_forces, 8), None, loss, config(epochs=1))
    with pytest.raises(ValueError, match=r"\['forces'\].*validation.*\['energy'\]"):
        train.fit(model, params, tl, graph.GraphLoader(no_forces, 8), loss, config(epochs=1))
    with pytest.raises(ValueError, match=r"\['gap'\].*\['energy', 'forces'\]"):
        train.fit(model, params, tl, None, train.target_loss("gap"), config(epochs=1))
    # with weight 0 the forces are not needed
    res = train.fit(model, params, graph.GraphLoader(no_forces, 8), None,
                    train.energy_force_loss(1.0, 0.0), config(epochs=1))
    assert np.isfinite(res.history[0]["train_loss"]) and res.history[0]["train_loss"] > 0


def test_ema_params_are_the_validated_and_returned_ones(setup, straight):
    model, params, tl, vl, loss, _ = setup
    zero = train.fit(model, params, tl, vl, loss, config(epochs=2, ema_decay=0.0))
    plain = train.fit(model, params, tl, vl, loss, config(epochs=2))
    assert tree_equal(zero.last_params, plain.last_params, atol=1e-6)  # decay 0: EMA = weights
    ema = train.fit(model, params, tl, vl, loss, config(epochs=2, ema_decay=0.9))
    assert not tree_equal(ema.last_params, plain.last_params, atol=1e-4)
    again = train.evaluate(model, ema.last_params, vl, loss)
    np.testing.assert_allclose(again["loss"], ema.history[-1]["val_loss"], rtol=1e-5)


def test_time_budget_and_a_stopping_callback(setup):
    model, params, tl, _, loss, _ = setup
    with pytest.warns(UserWarning, match=r"max_minutes = 1e-06 .* shorter than one epoch"):
        res = train.fit(model, params, tl, None, loss, config(max_minutes=1e-6))
    assert res.timed_out and len(res.history) == 1

    class StopAtTwo(train.Callback):
        seen: list = []

        def on_epoch_end(self, run, row):
            self.seen.append(run.epoch)
            run.stop = run.epoch >= 2

    cb = StopAtTwo()
    res = train.fit(model, params, tl, None, loss, config(), callbacks=[cb])
    assert cb.seen == [1, 2] and len(res.history) == 2 and not res.timed_out


def test_progress_without_a_terminal_prints_few_plain_lines(capsys):
    """Logs and pipes get one line per interval and the last epoch, not a bar redraw per
    epoch (a bar would write carriage returns)."""
    import io

    from jaxmat.core.engine import Progress

    class Run:
        single, n, stop_epoch, total_steps = True, 1, 50, 100
        config = train.FitConfig(epochs=50)

    out = io.StringIO()
    p = Progress(every_s=3600.0, stream=out)
    for e in range(1, 51):
        p.on_epoch_end(Run, {"epoch": e, "steps": 2 * e, "lr": 1e-3, "train_loss": 1.0 / e,
                             "val_loss": 2.0 / e, "val_forces_mae_eV_per_A": 0.5})
    p.on_end(Run)
    lines = out.getvalue().splitlines()
    assert lines == ["fit: epoch 1/50 step 2/100 lr 0.001, train_loss 1, val_loss 2, "
                     "val_forces_mae_eV_per_A 0.5",
                     "fit: epoch 50/50 step 100/100 lr 0.001, train_loss 0.02, val_loss 0.04, "
                     "val_forces_mae_eV_per_A 0.5"]
    assert "\r" not in out.getvalue()


@pytest.mark.parametrize("total, warmup", [(50, 0), (50, 7), (3, 0), (10, 10)])
def test_host_learning_rates_equal_the_optax_schedule(total, warmup):
    from jaxmat.core.engine import learning_rates, schedule

    host = learning_rates(3e-3, total, 1e-5, warmup)
    ref = np.array([float(schedule(3e-3, total, 1e-5, warmup)(s)) for s in range(total + 1)])
    np.testing.assert_allclose(host, ref, rtol=1e-5, atol=1e-12)  # optax rounds in float32
