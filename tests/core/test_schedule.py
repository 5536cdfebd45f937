"""Schedules in optimiser steps and wall time, the budget across resume, the
not-converged warning (engine), on a linear model with plain dict batches."""
from __future__ import annotations

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat.core import engine, train
from jaxmat.core.engine import loop
from jaxmat.core.protocol import Model

N_BATCHES = 4


def linear() -> Model:
    return Model(lambda key, b: {"w": jnp.zeros(3)},
                 lambda p, b: {"target": b["x"] @ p["w"]}, name="linear")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    w = np.array([1.0, -2.0, 0.5], np.float32)

    def batch(n):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        return {"x": x, "target": x @ w, "mask": np.ones(n, bool)}

    return [batch(8) for _ in range(N_BATCHES)], [batch(16)]


def fit(data, **kw):
    tr, va = data
    cfg = dict(lr=0.05, lr_end=1e-4, progress=False)
    cfg.update(kw)
    return train.fit(linear(), {"w": jnp.zeros(3)}, tr, va, train.target_loss("target"),
                     train.FitConfig(**cfg))


def test_default_steps_follow_the_training_set_size():
    lo, hi = engine.DEFAULT_MIN_STEPS, engine.DEFAULT_MAX_STEPS
    assert engine.default_steps(1) == lo
    assert engine.default_steps(10**6) == hi
    spe = (lo + hi) // (2 * engine.DEFAULT_PASSES)
    assert engine.default_steps(spe) == engine.DEFAULT_PASSES * spe
    cfg = train.FitConfig()
    assert cfg.epochs is None and cfg.steps is None
    assert cfg.requested_steps(7) == 7 * -(-engine.default_steps(7) // 7)  # whole epochs
    assert train.FitConfig(steps=10).requested_steps(4) == 12
    assert train.FitConfig(epochs=3).requested_steps(4) == 12


@pytest.mark.parametrize("kw, match", [
    (dict(steps=10, epochs=2), "give steps or epochs, not both"),
    (dict(steps=0), "steps must be >= 1, got 0"),
    (dict(max_minutes=0.0), "max_minutes must be positive, got 0.0"),
])
def test_bad_schedule_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        train.FitConfig(**kw)


def test_steps_set_the_schedule_and_it_anneals(data):
    res = fit(data, steps=10)
    assert len(res.history) == 3 and res.history[-1]["steps"] == 12
    assert res.history[-1]["lr"] == pytest.approx(1e-4, rel=1e-5)


def test_no_division_by_zero_in_a_one_step_schedule():
    with np.errstate(all="raise"):
        lr = engine.learning_rates(1e-3, 1, 1e-5, 0)
    assert np.all(np.isfinite(lr)) and lr[0] == pytest.approx(1e-3)


class FakeClock:
    """perf_counter advancing ``dt`` per call: an epoch lasts a few fake seconds."""

    def __init__(self, dt=1.0):
        self.t = itertools.count(0.0, dt)

    def __call__(self):
        return next(self.t)


def test_a_time_budget_shortens_the_schedule_so_it_still_anneals(data, monkeypatch):
    monkeypatch.setattr(loop.time, "perf_counter", FakeClock())
    res = fit(data, epochs=1000, max_minutes=60 / 60)  # 60 fake seconds
    n = len(res.history)
    assert 5 < n < 1000
    assert res.history[-1]["lr"] == pytest.approx(1e-4, rel=1e-5)  # annealed, not cut
    assert res.convergence["total_steps"] == n * N_BATCHES < res.convergence["requested_steps"]


def test_the_budget_and_the_plan_survive_resume(data, tmp_path, monkeypatch):
    monkeypatch.setattr(loop.time, "perf_counter", FakeClock())
    tr, va = data
    loss = train.target_loss("target")
    cfg = train.FitConfig(epochs=1000, max_minutes=1.0, lr=0.05, lr_end=1e-4,
                          progress=False, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    first = engine.run(linear(), engine.stack_one({"w": jnp.zeros(3)}), engine.OneMember(tr),
                       va, loss, cfg, single=True, max_epochs=4)
    assert first.plans == 2 and first.convergence is None  # a slice: no verdict yet
    second = engine.run(linear(), engine.stack_one({"w": jnp.zeros(3)}), engine.OneMember(tr),
                        va, loss, cfg, single=True)
    assert second.elapsed_before >= 0.8 * first.seconds  # the first call's time counts
    assert second.elapsed_before + second.seconds <= 60 + 10  # one budget for both calls
    assert second.total_steps == first.total_steps  # the plan is kept, not re-made
    assert second.epoch == second.planned_epochs
    assert second.history[-1]["lr"] == pytest.approx(1e-4, rel=1e-5)


def test_an_unconverged_run_warns_with_its_numbers(data):
    with pytest.warns(engine.NotConvergedWarning,
                      match=r"best val_loss is at epoch 3 of 3 \(step 12 of 12\) and it fell "
                            r"[0-9.]+ % over the last 1 epochs \(tolerance 0.1 %\); raise "
                            r"fit.epochs"):
        res = fit(data, epochs=3, lr=0.01, converge_tol=1e-3)
    c = res.convergence
    assert not c["converged"] and c["best_epoch"] == 3 and c["recent_fall"] > 1e-3
    assert c["raise"] == "fit.epochs"


def test_a_converged_run_does_not_warn(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", engine.NotConvergedWarning)
        res = fit(data, epochs=60, lr=0.1)
    assert res.convergence["converged"]
    assert res.convergence["recent_fall"] <= res.convergence["tol"]
