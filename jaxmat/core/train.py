"""Training of one model: losses, an optax step, and :func:`fit` with validation, early
stopping, orbax checkpoints, resume and a metrics log.

A single model is a committee of one: :func:`fit` adds a member axis and runs
:func:`jaxmat.core.engine.run` (the same compiled step as :func:`jaxmat.core.ensemble.fit`).
A *loss* is ``loss(outputs, batch) -> (scalar, stats)`` where ``stats`` maps a metric
name to ``(sum, count)``; ``sum / count`` over an epoch gives the metric (e.g. a MAE).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jaxmat.core import engine, parallel
from jaxmat.core.engine import (  # noqa: F401  (the training API of one model)
    Callback, EnergyForceLoss, FitConfig, FitResult, Loss, TargetLoss, energy_force_loss,
    make_optimizer, make_step, target_loss)
from jaxmat.core.protocol import Model, Params


def evaluate(model: Model, params: Params, batches: Iterable, loss: Loss) -> dict[str, float]:
    """Metrics of ``params`` over ``batches``: each stat as its pooled sum/count, and
    ``loss`` as the per-batch losses averaged with the number of real entries of each batch
    as weight (so a half-empty last batch counts half)."""
    out = engine.evaluate(model, engine.stack_one(params), batches, loss)
    return {k: float(v[0]) for k, v in out.items() if not k.startswith("committee_")}


def fit(
    model: Model,
    params: Params,
    train_data: Any,
    val_data: Any | None = None,
    loss: Loss | None = None,
    config: FitConfig | None = None,
    max_epochs: int | None = None,
    callbacks: Iterable[Callback] = (),
) -> FitResult:
    """Train ``params`` of ``model`` with Adam + cosine schedule (see :class:`FitConfig`).

    ``train_data``/``val_data`` are loaders with ``.epoch(k)`` (e.g. :class:`jaxmat.core.graph.GraphLoader`)
    or fixed lists of batches. With ``config.checkpoint_dir`` the state is saved every
    ``checkpoint_every`` epochs and at the end, and a later call resumes from the latest
    checkpoint. ``max_epochs`` caps the epochs run by this call (the schedule still follows
    ``config.epochs``), for runs in slices. ``ValueError`` when the data lack a target of
    ``loss.targets``. With ``config.data_parallel`` > 1 each step's batch is split over that
    many devices (:class:`jaxmat.core.parallel.Shards`).
    """
    cfg = config or FitConfig()
    dp = parallel.for_config(cfg)
    if dp is not None:
        train_data = parallel.Shards(train_data, dp.devices)
        val_data = None if val_data is None else parallel.Shards(val_data, dp.devices)
    r = engine.run(model, engine.stack_one(params), engine.OneMember(train_data), val_data,
                   loss or energy_force_loss(), cfg, single=True, data_parallel=dp,
                   callbacks=callbacks, max_epochs=max_epochs)
    return FitResult(engine.first(r.state["best_params"]), engine.first(r.evaluated), r.history,
                     int(r.best_epoch[0]), float(r.best_metric[0]), bool(r.stopped[0]),
                     r.seconds, r.timed_out, r.convergence)
