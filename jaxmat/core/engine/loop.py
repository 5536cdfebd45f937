"""The training run: :class:`FitConfig`, the loop of :func:`run` over epochs of compiled
committee steps (:mod:`jaxmat.core.engine.steps`) with validation, callbacks and a
wall-time budget, and the convergence check of a finished run."""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core import parallel
from jaxmat.core.callbacks import Callback, default_callbacks, unit_name
from jaxmat.core.committee import first, stack_one
from jaxmat.core.engine.losses import Loss, check_targets
from jaxmat.core.engine.schedules import DEFAULT_LR, default_steps, learning_rates
from jaxmat.core.engine.steps import (
    _select_members, _split_members, batches, compiled_step, evaluate, init_opt_state, reduce_stats)
from jaxmat.core.protocol import Model, Params

# The convergence check: the relative fall of the monitored validation metric over the last
# CONVERGE_WINDOW of the epochs. The last 10 % of a cosine schedule runs below 2.5 % of the
# peak learning rate, where even an under-trained model barely moves (ammonia runs that a
# longer run beat by 1.2-2x fell 0.4-2 % there); over the last quarter they fell 1.1-31.5 %,
# and each is flagged at 1 %.
CONVERGE_WINDOW = 0.25
CONVERGE_TOL = 0.01


class NotConvergedWarning(UserWarning):
    """A fit ended while its validation metric was still falling."""


@dataclasses.dataclass
class FitConfig:
    """Settings of a fit. The LR schedule (Adam, ``warmup_epochs`` of linear warm-up, cosine
    decay from ``lr`` to ``lr_end``) runs over ``steps`` optimiser steps, or ``epochs``
    epochs (give at most one; rounded up to whole epochs); with neither, over
    :func:`default_steps` of the training-set size. ``max_minutes`` is a wall-clock budget:
    the step time is measured on the first two epochs and the schedule shortened to what
    fits, so a capped run still anneals to ``lr_end``; the run also stops when the budget is
    spent. The plan and the time spent are saved in checkpoints, so a resumed run keeps
    its schedule and what remains of its budget. ``converge_tol``: the run warns
    (:class:`NotConvergedWarning`) when the monitored validation metric fell by more than
    this fraction over the last quarter of its epochs. ``patience`` (epochs without a
    better ``monitor``, per member) stops early;
    ``ema_decay`` keeps an exponential moving average of the weights, which is then what is
    validated and returned; ``checkpoint_dir`` enables save/resume; ``log_path`` (default
    ``<checkpoint_dir>/metrics.csv``) gets one CSV row per epoch. ``data_parallel`` splits
    every step's batch over that many devices (:mod:`jaxmat.core.parallel`; the loader's
    ``batch_size`` is the global batch and must be a multiple of it)."""

    epochs: int | None = None
    steps: int | None = None
    lr: float = DEFAULT_LR
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
    max_minutes: float | None = None
    ema_decay: float | None = None
    data_parallel: int = 1
    converge_tol: float = CONVERGE_TOL

    def __post_init__(self):
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"give steps or epochs, not both (got steps={self.steps}, "
                             f"epochs={self.epochs})")
        for k, v in (("epochs", self.epochs), ("steps", self.steps)):
            if v is not None and v < 1:
                raise ValueError(f"{k} must be >= 1, got {v}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if not self.converge_tol >= 0:
            raise ValueError(f"converge_tol must be >= 0, got {self.converge_tol}")

    def requested_steps(self, steps_per_epoch: int) -> int:
        """The schedule's optimiser steps before any time budget, in whole epochs."""
        n = self.steps or (self.epochs or 0) * steps_per_epoch or default_steps(steps_per_epoch)
        return math.ceil(n / steps_per_epoch) * steps_per_epoch


@dataclasses.dataclass
class FitResult:
    """The result of a fit of one model (:func:`jaxmat.core.train.fit`)."""

    params: Params  # best parameters (by the monitored validation metric)
    last_params: Params
    history: list[dict]  # one row per epoch
    best_epoch: int
    best_metric: float
    stopped_early: bool
    seconds: float
    timed_out: bool = False  # stopped by ``max_minutes``
    convergence: dict | None = None  # :func:`convergence` of the run


class CommitteeFitResult(FitResult):
    """The result of a committee fit (:func:`jaxmat.core.ensemble.fit`), with the fields of
    :class:`FitResult` per member: ``params`` (each member's best) and ``last_params``
    stacked (N, ...); ``best_epoch``, ``best_metric`` and ``stopped_early`` lists of length
    N, as are the per-member metrics of each ``history`` row."""


# --------------------------------------------------------------------------- the run
@dataclasses.dataclass
class Run:
    """Mutable state of one fit, handed to callbacks. ``state`` holds the arrays (params,
    opt_state, best_params, ema; leading member axis), the rest lives on the host.
    ``single``: a one-member run shown without its member axis (checkpoints, history)."""

    config: FitConfig
    state: dict
    n: int
    single: bool
    stop_epoch: int
    epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    convergence: dict | None = None  # set when the schedule ends (:func:`convergence`)
    stop: bool = False  # set by a callback (or the time budget): end after this epoch
    timed_out: bool = False
    seconds: float = 0.0
    steps_per_epoch: int = 1
    requested_steps: int = 0  # the schedule before the time budget
    total_steps: int = 0      # the schedule's length (steps, whole epochs)
    plans: int = 0            # epochs whose times have set the schedule (at most 2)
    elapsed_before: float = 0.0  # seconds spent by earlier calls of a resumed run
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def __post_init__(self):  # per-member counters, saved in checkpoint metadata
        for k, (fill, dtype) in _COUNTERS.items():
            setattr(self, k, np.full(self.n, fill, dtype))

    @property
    def done(self) -> bool:
        return self.epoch >= self.stop_epoch or self.stop or bool(self.stopped.all())

    @property
    def planned_epochs(self) -> int:
        return self.total_steps // self.steps_per_epoch

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, earlier calls of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def meta(self) -> dict:
        meta = {k: [x if math.isfinite(x) else None for x in getattr(self, k).tolist()]
                for k in _COUNTERS}
        schedule = {"requested_steps": self.requested_steps, "total_steps": self.total_steps,
                    "plans": self.plans, "elapsed_s": self.elapsed,
                    "max_minutes": self.config.max_minutes}
        return {"epoch": self.epoch, "history": self.history, "schedule": schedule,
                **({k: v[0] for k, v in meta.items()} if self.single else meta)}

    def load_meta(self, meta: dict) -> None:
        for k, (fill, dtype) in _COUNTERS.items():
            v = np.atleast_1d(np.asarray(meta[k], object))
            if len(v) != self.n:
                raise ValueError(f"the checkpoint holds {len(v)} members, params have {self.n}")
            setattr(self, k, np.array([fill if x is None else x for x in v], dtype))
        self.epoch, self.history = int(meta["epoch"]), list(meta["history"])
        sched = meta.get("schedule")  # absent in checkpoints of older versions
        if sched:
            self.elapsed_before = float(sched.get("elapsed_s") or 0.0)
            # the same settings: keep the plan made from the first epochs' times
            if (sched.get("requested_steps") == self.requested_steps
                    and sched.get("max_minutes") == self.config.max_minutes):
                self.total_steps, self.plans = int(sched["total_steps"]), int(sched["plans"])

    def end_epoch(self, row: dict, metric: np.ndarray) -> None:
        """Record one epoch: best params/metric per member, bad-epoch counters, history."""
        bad_members = np.flatnonzero(~np.isfinite(metric) & ~self.stopped)
        if len(bad_members):
            raise FloatingPointError(f"non-finite {self.config.monitor} at epoch "
                                     f"{self.epoch + 1} for member(s) {bad_members.tolist()}")
        improved = (metric < self.best_metric) & ~self.stopped
        if improved.any():
            self.state["best_params"] = _select_members(improved, self.evaluated,
                                                      self.state["best_params"])
        self.best_metric = np.where(improved, metric, self.best_metric)
        self.best_epoch = np.where(improved, self.epoch + 1, self.best_epoch)
        self.bad_epochs = np.where(improved, 0, self.bad_epochs + ~self.stopped)
        self.epoch += 1
        self.history.append(_squeeze_row(row) if self.single else row)

    @property
    def evaluated(self) -> Params:
        """The params that are validated and returned: the EMA ones when kept."""
        return self.state.get("ema", self.state["params"])


_COUNTERS = {"best_metric": (math.inf, float), "best_epoch": (-1, int), "bad_epochs": (0, int),
             "steps": (0, int), "stopped": (False, bool)}


def _squeeze_row(row: dict) -> dict:
    return {k: v[0] if isinstance(v, list) else v for k, v in row.items()
            if k != "active" and not k.startswith("val_committee_")}


class OneMember:
    """A single model's loader (``.epoch(k)`` or a list of batches) as a committee loader of
    one member: yields ``(batch with a leading axis of 1, active=[True])``."""

    def __init__(self, data: Any):
        self.data = data

    def __len__(self) -> int:
        return len(self.data) if hasattr(self.data, "__len__") else sum(1 for _ in self.epoch(0))

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Any, np.ndarray]]:
        for b in batches(self.data, epoch):
            yield stack_one(b), np.ones(1, bool)


def run(model: Model, params: Params, loader: Any, val_data: Any, loss: Loss, cfg: FitConfig,
        *, single: bool = False, put: Callable = lambda t: t,
        data_parallel: parallel.DataParallel | None = None,
        callbacks: Iterable[Callback] = (), max_epochs: int | None = None) -> Run:
    """Train committee ``params`` (leading member axis) on ``loader`` (``.epoch(k)`` yields
    ``(stacked batch, active (N,))``, ``len`` = steps per epoch) with shared validation
    batches ``val_data``; ``put`` places member-axis trees (e.g. sharding). With
    ``data_parallel`` the loader and ``val_data`` yield global batches of
    :mod:`jaxmat.core.parallel` (a device axis after the member axis), placed on its mesh
    (``put`` is then its ``params``). Targets named in
    ``loss.targets`` are checked on the first training and validation batch. ``callbacks``
    run before :func:`default_callbacks`. Returns the finished :class:`Run`."""
    n = len(jax.tree_util.tree_leaves(params)[0])
    spe = len(loader)
    if spe == 0:
        raise ValueError("training data yields no batches")
    check_targets(loss, first(next(iter(loader.epoch(0)))[0]), "training")
    if val_data is not None:
        check_targets(loss, next(iter(batches(val_data, 0))), "validation")
    dp, put = data_parallel, data_parallel.params if data_parallel is not None else put
    params = put(jax.tree_util.tree_map(jnp.copy, params))  # the step donates its inputs
    state = {"params": params, "opt_state": put(init_opt_state(params, cfg.clip)),
             "best_params": jax.tree_util.tree_map(jnp.copy, params)}
    if cfg.ema_decay is not None:
        state["ema"] = jax.tree_util.tree_map(jnp.copy, params)
    requested = cfg.requested_steps(spe)
    r = Run(cfg, state, n, single, requested // spe, steps_per_epoch=spe,
            requested_steps=requested, total_steps=requested)
    cbs = [*callbacks, *default_callbacks(cfg)]
    t0 = time.perf_counter()
    try:
        for cb in cbs:
            cb.on_start(r)  # a checkpoint restores counters, history and the schedule
        r.state = put(r.state)
        r.t0 = t0
        last = None if max_epochs is None else r.epoch + max_epochs

        def plan() -> np.ndarray:
            r.stop_epoch = r.planned_epochs if last is None else min(r.planned_epochs, last)
            return learning_rates(cfg.lr, r.total_steps, cfg.lr_end, cfg.warmup_epochs * spe)

        lrs = plan()
        mark = r.elapsed  # epoch times for the budget: from one epoch's end to the next
        while not r.done:
            te = time.perf_counter()
            row = _train_epoch(r, model, loss, loader, put, lrs, spe, dp)
            if val_data is not None:
                val = evaluate(model, r.evaluated, batches(val_data, 0), loss,
                               split=dp is not None, put=dp.shared if dp else lambda t: t)
                row.update({f"val_{k}": v.tolist() if isinstance(v, np.ndarray) else v
                            for k, v in val.items()})
            metric = np.asarray(row[f"val_{cfg.monitor}" if val_data is not None else "train_loss"],
                                dtype=float)
            row["active"] = [bool(not s) for s in r.stopped]
            row["time_s"] = time.perf_counter() - te
            named = {unit_name(k): v for k, v in row.items()}  # history keys carry units
            r.end_epoch(named, metric)
            if cfg.max_minutes is not None:
                now = r.elapsed
                if r.plans < 2 and _fit_budget(r, now - mark):
                    lrs = plan()
                mark = now
                if r.elapsed >= 60 * cfg.max_minutes:
                    r.stop = r.timed_out = True
            for cb in cbs:
                cb.on_epoch_end(r, named)
    finally:
        for cb in cbs:
            cb.on_end(r)
    r.seconds = time.perf_counter() - t0
    if r.epoch >= r.planned_epochs or r.timed_out:  # the schedule's end, not a slice's
        r.convergence = convergence(r)
        if not r.convergence["converged"]:
            warnings.warn(r.convergence["message"], NotConvergedWarning, stacklevel=2)
    return r


def _fit_budget(r: Run, epoch_s: float) -> bool:
    """Shorten (or, after the first epoch's compile, lengthen again up to the requested
    steps) the schedule so that it fits ``max_minutes`` at ``epoch_s`` seconds per epoch
    (training, validation and callbacks);
    True when the plan changed. Warns when not even one epoch fits."""
    budget = 60 * r.config.max_minutes
    r.plans += 1
    more = int(max(budget - r.elapsed, 0.0) // max(1.05 * epoch_s, 1e-9))  # 5 % margin
    epochs = max(min(r.requested_steps // r.steps_per_epoch, r.epoch + more), r.epoch)
    if r.epoch == 1 and r.elapsed > budget:
        warnings.warn(f"max_minutes = {r.config.max_minutes:g} ({budget:.1f} s) is shorter than "
                      f"one epoch ({r.elapsed:.1f} s, {r.steps_per_epoch} steps); the run stops "
                      "after it, un-annealed: raise fit.max_minutes", stacklevel=3)
    old, r.total_steps = r.total_steps, epochs * r.steps_per_epoch
    return r.total_steps != old


def convergence(r: Run) -> dict:
    """Whether a finished run converged: the monitored validation metric (training loss
    without validation; committee mean) over the epochs, its best epoch (and whether it lies
    in the last 10 % of the epochs), and its relative fall over the last
    ``CONVERGE_WINDOW`` of the epochs (min of that window against the min before it);
    ``converged`` when the fall is at most ``config.converge_tol``. ``message`` names the
    numbers and the setting to raise."""
    cfg, hist = r.config, r.history
    key = unit_name(f"val_{cfg.monitor}")
    key = key if hist and key in hist[0] else "train_loss"
    y = np.array([np.nanmean(np.atleast_1d(np.asarray(h[key], float))) for h in hist])
    n = len(y)
    window = max(1, math.ceil(CONVERGE_WINDOW * n))
    fall = 0.0
    if n > window:
        before, recent = float(np.min(y[:-window])), float(np.min(y[-window:]))
        fall = max(0.0, (before - recent) / before) if before > 0 else 0.0
    best = int(np.argmin(y)) + 1 if n else 0
    # early stopping that ended every member counts as converged
    out = {"converged": bool(r.stopped.all()) or fall <= cfg.converge_tol, "metric": key,
           "best_epoch": best, "epochs": n, "steps": int(np.max(r.steps)),
           "total_steps": r.total_steps, "requested_steps": r.requested_steps,
           "best_in_last_10pct": bool(n and best > 0.9 * n),
           "recent_fall": fall, "window_epochs": window, "tol": cfg.converge_tol,
           "timed_out": r.timed_out, "message": ""}
    if not out["converged"]:
        out["raise"] = raise_key = ("fit.max_minutes" if cfg.max_minutes is not None
                                    and r.total_steps < r.requested_steps else
                                    "fit.steps" if cfg.epochs is None else "fit.epochs")
        out["message"] = (f"training has not converged: the best {key} is at epoch {best} of "
                          f"{n} (step {int(np.max(r.steps))} of {r.total_steps}) and it fell "
                          f"{100 * fall:.1f} % over the last {window} epochs (tolerance "
                          f"{100 * cfg.converge_tol:g} %); raise {raise_key}")
    return out


def _train_epoch(r: Run, model: Model, loss: Loss, loader: Any, put: Callable,
                 lrs: np.ndarray, spe: int, dp: parallel.DataParallel | None = None) -> dict:
    """One epoch of committee steps; the row of per-member training metrics."""
    step = compiled_step(model, loss, r.config.clip, r.config.ema_decay, dp is not None)
    key0, s, outs = jax.random.key(r.config.seed), r.state, []
    for k, (b, act) in enumerate(loader.epoch(r.epoch)):
        act = act & ~r.stopped
        lr = lrs[np.minimum(r.steps, len(lrs) - 1)]
        r.steps = r.steps + act
        *new, value, st = step(s["params"], s["opt_state"], s.get("ema"),
                               dp.batch(b) if dp else put(b), key0, np.int32(r.epoch * spe + k),
                               put(act), put(lr))
        s.update((k, v) for k, v in zip(("params", "opt_state", "ema"), new) if v is not None)
        outs.append((st, value, act))
    stats, losses, actives = zip(*outs)
    row: dict[str, Any] = {"epoch": r.epoch + 1, "time_s": 0.0, "steps": int(np.max(r.steps)),
                           "lr": float(lrs[min(int(np.max(r.steps)), len(lrs) - 1)])}
    stats, losses = parallel.gather((stats, losses))
    w = np.asarray(actives, dtype=float)
    per = [reduce_stats([st for st, a in zip(sl, w[:, m]) if a])
           for m, sl in enumerate(_split_members(stats, r.n))]
    for name in sorted(set().union(*per)):
        row[f"train_{name}"] = [p.get(name, math.nan) for p in per]
    losses = np.asarray(jax.device_get(losses))
    row["train_loss"] = [float(x) if c else math.nan for x, c in
                         zip((w * losses).sum(0) / np.maximum(w.sum(0), 1), w.sum(0))]
    return row


def result(r: Run) -> CommitteeFitResult:
    """The committee result of a finished run (per-member lists)."""
    return CommitteeFitResult(r.state["best_params"], r.evaluated, r.history,
                              r.best_epoch.tolist(), r.best_metric.tolist(), r.stopped.tolist(),
                              r.seconds, r.timed_out, r.convergence)
