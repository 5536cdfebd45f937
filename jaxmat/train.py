"""Training: losses, a jitted optax step, and ``fit`` with validation, early stopping,
orbax checkpoints, resume and a metrics log.

A *loss* is ``loss(outputs, batch) -> (scalar, stats)`` where ``stats`` maps a metric
name to ``(sum, count)``; ``sum / count`` over an epoch gives the metric (e.g. a MAE).
Every loss uses the batch's padding masks, so padded entries contribute nothing.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmat.checkpoint import Checkpointer
from jaxmat.protocol import Model, Params

Loss = Callable[[dict, Any], tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]]


# --------------------------------------------------------------------------- losses
def energy_force_loss(energy: float = 1.0, forces: float = 10.0, stress: float = 0.0) -> Loss:
    """Weighted MSE of energy per atom (eV/atom)², forces (eV/Å)² and stress (eV/Å³)².

    Stats: ``energy_mae`` (eV/atom), ``forces_mae`` (eV/Å per component), ``stress_mae``.
    Graph labels with a ``<name>_mask`` (e.g. missing stress) are skipped where False.
    """

    def loss(out: dict, batch: Any) -> tuple[jax.Array, dict]:
        g = batch.globals
        gmask = g["mask"].astype(jnp.float32)
        n_at = jnp.maximum(g["n_atoms"], 1.0)
        total = 0.0
        stats = {}
        if energy and "energy" in g:
            m = gmask * g.get("energy_mask", 1.0)
            err = (out["energy"] - g["energy"]) / n_at
            cnt = jnp.maximum(m.sum(), 1.0)
            total = total + energy * jnp.sum(m * err**2) / cnt
            stats["energy_mae"] = (jnp.sum(m * jnp.abs(err)), m.sum())
        if forces and "forces" in batch.nodes:
            m = batch.nodes["mask"].astype(jnp.float32) * batch.nodes.get("forces_mask", 1.0)
            err = out["forces"] - batch.nodes["forces"]
            cnt = jnp.maximum(3.0 * m.sum(), 1.0)
            total = total + forces * jnp.sum(m[:, None] * err**2) / cnt
            stats["forces_mae"] = (jnp.sum(m[:, None] * jnp.abs(err)), 3.0 * m.sum())
        if stress and "stress" in g:
            m = gmask * g.get("stress_mask", 1.0)
            err = out["stress"] - g["stress"]
            cnt = jnp.maximum(9.0 * m.sum(), 1.0)
            total = total + stress * jnp.sum(m[:, None, None] * err**2) / cnt
            stats["stress_mae"] = (jnp.sum(m[:, None, None] * jnp.abs(err)), 9.0 * m.sum())
        return total, stats

    return loss


def target_loss(key: str = "target", per_atom: bool = False) -> Loss:
    """MSE on a graph-level target ``globals[key]`` (scalar or vector) vs ``outputs[key]``.

    Works for graph batches and for plain dict batches with a ``mask`` entry.
    Stats: ``<key>_mae`` (mean absolute error per component).
    """

    def loss(out: dict, batch: Any) -> tuple[jax.Array, dict]:
        g = batch.globals if hasattr(batch, "globals") else batch
        y = g[key]
        pred = out[key]
        mask = g["mask"].astype(jnp.float32)
        if per_atom:
            n = jnp.maximum(g["n_atoms"], 1.0).reshape((-1,) + (1,) * (y.ndim - 1))
            y, pred = y / n, pred / n
        w = mask.reshape((-1,) + (1,) * (y.ndim - 1)) * jnp.ones_like(y)
        err = pred - y
        cnt = jnp.maximum(w.sum(), 1.0)
        return jnp.sum(w * err**2) / cnt, {f"{key}_mae": (jnp.sum(w * jnp.abs(err)), w.sum())}

    return loss


# --------------------------------------------------------------------------- steps
def make_optimizer(lr: float = 1e-3, total_steps: int = 1000, lr_end: float = 1e-5,
                   warmup_steps: int = 0, clip: float | None = 10.0) -> optax.GradientTransformation:
    """Adam with linear warm-up and cosine decay from ``lr`` to ``lr_end``."""
    sched = optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else lr, lr, max(warmup_steps, 1), max(total_steps, warmup_steps + 1),
        end_value=lr_end)
    chain = [optax.clip_by_global_norm(clip)] if clip else []
    return optax.chain(*chain, optax.adam(sched))


def make_step(model: Model, loss: Loss, optimizer: optax.GradientTransformation):
    """Pure training step ``(params, opt_state, batch, key) -> (params, opt_state, loss, stats)``.

    Not jitted here, so that ensembles can ``vmap`` it before ``jit``.
    """

    def step(params, opt_state, batch, key):
        def objective(p):
            out = model.train_apply(p, batch, key)
            return loss(out, batch)

        (value, stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, stats

    return step


def make_eval(model: Model, loss: Loss):
    """Pure evaluation ``(params, batch) -> (loss, stats)`` (dropout off)."""

    def evaluate(params, batch):
        return loss(model.apply(params, batch), batch)

    return evaluate


def _reduce(stats_list: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    if not stats_list:
        return out
    for name in stats_list[0]:
        s = sum(float(st[name][0]) for st in stats_list)
        c = sum(float(st[name][1]) for st in stats_list)
        out[name] = s / c if c else float("nan")
    return out


def evaluate(model: Model, params: Params, batches: Iterable, loss: Loss,
             _fn: Callable | None = None) -> dict[str, float]:
    """Metrics of ``params`` over ``batches``: each stat as its pooled sum/count, and
    ``loss`` as the per-batch losses averaged with the number of real entries of each batch
    as weight (so a half-empty last batch counts half)."""
    fn = _fn or jax.jit(make_eval(model, loss))
    stats, losses, weights = [], [], []
    for b in batches:
        value, st = fn(params, b)
        stats.append(st)
        losses.append(float(value))
        weights.append(_n_real(b))
    out = _reduce(stats)
    w = np.asarray(weights, dtype=float)
    out["loss"] = (float(np.sum(w * np.asarray(losses)) / w.sum()) if losses and w.sum() > 0
                   else float("nan"))
    return out


def _n_real(batch: Any) -> float:
    """Number of real (unpadded) entries of a batch: graphs of a GraphsTuple, rows of a
    dict batch with a ``"mask"``; 1 when the batch carries no mask."""
    g = getattr(batch, "globals", None)
    mask = g.get("mask") if isinstance(g, dict) else None
    if mask is None and isinstance(batch, dict):
        mask = batch.get("mask")
    return float(np.sum(np.asarray(mask))) if mask is not None else 1.0


def _batches(data: Any, epoch: int) -> Iterable:
    return data.epoch(epoch) if hasattr(data, "epoch") else data


# --------------------------------------------------------------------------- fit
@dataclasses.dataclass
class FitConfig:
    """Settings of :func:`fit`. ``epochs`` fixes the LR schedule; ``patience`` (epochs
    without a better ``monitor``) stops early; ``checkpoint_dir`` enables save/resume."""

    epochs: int = 100
    lr: float = 1e-3
    lr_end: float = 1e-5
    warmup_epochs: int = 0
    clip: float | None = 10.0
    patience: int | None = None
    monitor: str = "loss"
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    keep: int = 2
    log_path: str | None = None
    progress: bool = True


@dataclasses.dataclass
class FitResult:
    params: Params  # best parameters (by the monitored validation metric)
    last_params: Params
    history: list[dict]
    best_epoch: int
    best_metric: float
    stopped_early: bool
    seconds: float


def fit(
    model: Model,
    params: Params,
    train_data: Any,
    val_data: Any | None = None,
    loss: Loss | None = None,
    config: FitConfig | None = None,
    max_epochs: int | None = None,
) -> FitResult:
    """Train ``params`` of ``model`` with Adam + cosine schedule.

    ``train_data``/``val_data`` are loaders with ``.epoch(k)`` (e.g. :class:`jaxmat.graph.GraphLoader`)
    or fixed lists of batches. With ``config.checkpoint_dir`` the state is saved after every
    epoch and a later call resumes from the latest checkpoint. ``max_epochs`` caps the epochs
    run by this call (the schedule still follows ``config.epochs``), for runs in slices.
    """
    cfg = config or FitConfig()
    loss = loss or energy_force_loss()
    steps_per_epoch = sum(1 for _ in _batches(train_data, 0))
    if steps_per_epoch == 0:
        raise ValueError("training data yields no batches")
    optimizer = make_optimizer(cfg.lr, cfg.epochs * steps_per_epoch, cfg.lr_end,
                               cfg.warmup_epochs * steps_per_epoch, cfg.clip)
    step_fn = jax.jit(make_step(model, loss, optimizer), donate_argnums=(0, 1))
    eval_fn = jax.jit(make_eval(model, loss))
    # the step donates its buffers: work on copies so the caller's params stay valid
    params = jax.tree_util.tree_map(jnp.array, params)
    opt_state = optimizer.init(params)
    state = {"params": params, "opt_state": opt_state,
             "best_params": jax.tree_util.tree_map(jnp.array, params)}
    meta = {"epoch": 0, "best_metric": math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}

    ckpt = Checkpointer(cfg.checkpoint_dir, cfg.keep) if cfg.checkpoint_dir else None
    if ckpt is not None and ckpt.latest_step() is not None:
        _, state, meta = ckpt.restore(state)
    log_path = cfg.log_path or (os.path.join(ckpt.directory, "metrics.csv") if ckpt else None)

    params, opt_state = state["params"], state["opt_state"]
    best_params = state["best_params"]
    history = list(meta["history"])
    key0 = jax.random.key(cfg.seed)
    start = int(meta["epoch"])
    stop = cfg.epochs if max_epochs is None else min(cfg.epochs, start + max_epochs)
    stopped = cfg.patience is not None and meta["bad_epochs"] >= cfg.patience
    t0 = time.perf_counter()
    bar = None
    if cfg.progress and stop > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, desc="fit", unit="epoch", leave=False, mininterval=2.0)
    try:
        for epoch in range(start, stop):
            if stopped:
                break
            te = time.perf_counter()
            tr_stats, tr_loss = [], []
            for k, b in enumerate(_batches(train_data, epoch)):
                key = jax.random.fold_in(key0, epoch * steps_per_epoch + k)
                params, opt_state, value, st = step_fn(params, opt_state, b, key)
                tr_stats.append(st)
                tr_loss.append(value)
            row = {"epoch": epoch + 1, "time_s": 0.0}
            row.update({f"train_{k}": v for k, v in _reduce(tr_stats).items()})
            row["train_loss"] = float(np.mean([float(v) for v in tr_loss]))
            if val_data is not None:
                val = evaluate(model, params, _batches(val_data, 0), loss, eval_fn)
                row.update({f"val_{k}": v for k, v in val.items()})
                metric = val[cfg.monitor]
            else:
                metric = row["train_loss"]
            row["time_s"] = time.perf_counter() - te
            if not math.isfinite(metric):
                raise FloatingPointError(f"non-finite {cfg.monitor} at epoch {epoch + 1}: {metric}")
            if metric < meta["best_metric"]:
                meta.update(best_metric=float(metric), best_epoch=epoch + 1, bad_epochs=0)
                best_params = jax.tree_util.tree_map(jnp.copy, params)
            else:
                meta["bad_epochs"] += 1
            history.append(row)
            meta.update(epoch=epoch + 1, history=history)
            last = epoch + 1 == stop or (cfg.patience is not None and meta["bad_epochs"] >= cfg.patience)
            if ckpt is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
                ckpt.save(epoch + 1, {"params": params, "opt_state": opt_state,
                                      "best_params": best_params}, meta)
            if log_path:
                _append_csv(log_path, row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                 if k.startswith("val_") and k.endswith("mae")} or
                                {"loss": f"{row['train_loss']:.4g}"})
            stopped = cfg.patience is not None and meta["bad_epochs"] >= cfg.patience
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    return FitResult(best_params, params, history, int(meta["best_epoch"]),
                     float(meta["best_metric"]), bool(stopped), time.perf_counter() - t0)


def _append_csv(path: str, row: dict) -> None:
    """Append one epoch to a CSV log (header from the first row written)."""
    new = not os.path.exists(path)
    fields = list(row)
    if not new:
        with open(path) as f:
            fields = f.readline().strip().split(",")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
        if new:
            w.writeheader()
        w.writerow(row)
