"""The training engine: one loop trains a committee of 1..N members (a leading member axis
on params), one vmapped step per batch, compiled once per (model, loss, clip, EMA, shapes).

A *loss* is ``loss(outputs, batch) -> (scalar, stats)`` where ``stats`` maps a metric name
to ``(sum, count)``; ``sum / count`` over an epoch gives the metric (e.g. a MAE). Built-in
losses are frozen dataclasses (equal when their settings are, so they key the step cache),
declare the batch entries they need in ``targets`` and apply padding masks with
``jnp.where``, so NaN/inf in padded entries reach neither the loss nor its gradient.

The learning rate is an argument of the compiled step, computed on the host from each
member's step count (Adam, linear warm-up, cosine decay over the run's optimiser steps), so
runs of any length share one compiled step. The schedule's length is set in steps: given
(``steps`` or ``epochs``) or, by default, from the size of the training set
(:func:`default_steps`), and shortened to fit a wall-time budget (``max_minutes``) so that a
capped run still anneals; the plan and the time spent are saved in checkpoints. A run that
ends with its validation metric still falling warns (:func:`convergence`).
:mod:`jaxmat.core.train` (one model) and :mod:`jaxmat.core.ensemble` (committees) are thin
fronts of :func:`run`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmat.core import parallel
from jaxmat.core.callbacks import (  # noqa: F401  (re-exported: engine.Callback, ...)
    Callback, Checkpoint, CSVLog, EarlyStopping, Progress, default_callbacks, unit_name)
from jaxmat.core.committee import first, stack_one  # noqa: F401  (re-exported)
from jaxmat.core.protocol import Model, Params

Stats = dict[str, tuple[jax.Array, jax.Array]]
Loss = Callable[[dict, Any], tuple[jax.Array, Stats]]
BOOKKEEPING = frozenset({"mask", "positions", "species", "graph", "cell", "pbc", "n_atoms",
                         "dense"})


# --------------------------------------------------------------------------- losses
def penalty(err: jax.Array, kind: str = "mse", delta: float = 1.0) -> jax.Array:
    """Per-component penalty: ``err²`` (``"mse"``) or Huber (``"huber"``): ``err²`` for
    ``|err| <= delta``, ``2·delta·|err| - delta²`` beyond (2x optax's Huber, so both kinds
    agree on small errors); ``delta`` in the units of ``err``."""
    if kind == "huber":
        a = jnp.abs(err)
        return jnp.where(a <= delta, err**2, 2.0 * delta * a - delta**2)
    return err**2


def masked_error(err: jax.Array, mask: jax.Array, kind: str = "mse",
                 delta: float = 1.0) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Mean :func:`penalty` over the entries where ``mask`` (bool, leading axes of ``err``)
    is True, and the ``(sum |err|, count)`` MAE stat; other entries are replaced with
    ``jnp.where``, so NaN/inf there cannot reach the value or its gradient."""
    m = jnp.broadcast_to(jnp.reshape(mask, mask.shape + (1,) * (err.ndim - mask.ndim)), err.shape)
    err = jnp.where(m, err, 0.0)
    count = jnp.sum(m).astype(jnp.float32)
    value = jnp.sum(jnp.where(m, penalty(err, kind, delta), 0.0)) / jnp.maximum(count, 1.0)
    return value, (jnp.sum(jnp.abs(err)), count)


def label_mask(store: dict, name: str) -> jax.Array:
    """Bool mask of real entries of ``store`` that carry label ``name`` (``<name>_mask``)."""
    return jnp.asarray(store["mask"], bool) & jnp.asarray(store.get(f"{name}_mask", True), bool)


def _check_kind(kind: str, delta: float) -> None:
    if kind not in ("mse", "huber"):
        raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
    if not delta > 0:
        raise ValueError(f"Huber delta must be positive, got {delta}")


@dataclasses.dataclass(frozen=True)
class EnergyForceLoss:
    """Weighted loss on energy per atom (eV/atom), forces (eV/Å per component) and stress
    (eV/Å³): MSE, or Huber with ``delta`` in each target's units (``kind="huber"``).

    Stats: ``energy_mae``, ``forces_mae``, ``stress_mae``. Labels with a ``<name>_mask``
    (e.g. stress on some structures) count only where True. A target with weight 0 is
    neither needed nor used."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    kind: str = "mse"
    delta: float = 0.01

    def __post_init__(self):
        _check_kind(self.kind, self.delta)
        if not self.targets:
            raise ValueError("energy_force_loss needs a non-zero weight on energy, forces "
                             "or stress")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(k for k in ("energy", "forces", "stress") if getattr(self, k))

    def __call__(self, out: dict, batch: Any) -> tuple[jax.Array, Stats]:
        total, stats = 0.0, {}
        for name in self.targets:
            store = batch.nodes if name == "forces" else batch.globals
            err = out[name] - store[name]
            if name == "energy":
                err = err / jnp.maximum(batch.globals["n_atoms"], 1.0)
            value, stats[f"{name}_mae"] = masked_error(err, label_mask(store, name), self.kind,
                                                       self.delta)
            total = total + getattr(self, name) * value
        return total, stats


@dataclasses.dataclass(frozen=True)
class TargetLoss:
    """MSE (or Huber) of ``outputs[key]`` vs a graph-level target ``globals[key]`` (scalar
    or vector; divided by ``n_atoms`` with ``per_atom``). Works for graph batches and plain
    dict batches with a ``mask`` entry. Stats: ``<key>_mae`` (per component)."""

    key: str = "target"
    per_atom: bool = False
    kind: str = "mse"
    delta: float = 1.0

    def __post_init__(self):
        _check_kind(self.kind, self.delta)

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.key,)

    def __call__(self, out: dict, batch: Any) -> tuple[jax.Array, Stats]:
        g = batch.globals if hasattr(batch, "globals") else batch
        err = out[self.key] - g[self.key]
        if self.per_atom:
            err = err / jnp.maximum(g["n_atoms"], 1.0).reshape((-1,) + (1,) * (err.ndim - 1))
        value, stat = masked_error(err, label_mask(g, self.key), self.kind, self.delta)
        return value, {f"{self.key}_mae": stat}


energy_force_loss = EnergyForceLoss
target_loss = TargetLoss


def check_targets(loss: Loss, batch: Any, data: str = "training") -> None:
    """Raise ``ValueError`` when ``batch`` lacks a target named in ``loss.targets``, naming
    it and the target keys the batch does carry (``globals`` and ``nodes``)."""
    glob, nodes = (batch.globals, batch.nodes) if hasattr(batch, "globals") else (batch, {})
    missing = [k for k in getattr(loss, "targets", ()) if k not in glob and k not in nodes]
    if missing:
        found = sorted(k for k in {*glob, *nodes}
                       if k not in BOOKKEEPING and not k.endswith("_mask"))
        raise ValueError(f"the loss needs target(s) {missing} but the {data} data carry "
                         f"{found or 'no targets'}")


# --------------------------------------------------------------------------- steps
def schedule(lr: float, total_steps: int, lr_end: float = 1e-5,
             warmup_steps: int = 0) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, cosine decay to ``lr_end``."""
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else lr, lr, max(warmup_steps, 1), max(total_steps, warmup_steps + 1),
        end_value=lr_end)


def learning_rates(lr: float, total_steps: int, lr_end: float = 1e-5,
                   warmup_steps: int = 0) -> np.ndarray:
    """:func:`schedule` at steps ``0..total_steps`` (float32), computed on the host: no
    device program per run length."""
    warm = max(warmup_steps, 1)
    decay = max(max(total_steps, warmup_steps + 1) - warm, 1)  # no 0/0 for one-step runs
    start = 0.0 if warmup_steps else lr
    t = np.arange(total_steps + 1, dtype=np.float64)
    linear = start + (lr - start) * np.minimum(t, warm) / warm
    c = np.minimum(np.maximum(t - warm, 0.0), decay) / decay
    alpha = lr_end / lr if lr else 0.0
    cosine = lr * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * c)) + alpha)
    return np.where(t < warm, linear, cosine).astype(np.float32)


def make_optimizer(lr: float = 1e-3, total_steps: int = 1000, lr_end: float = 1e-5,
                   warmup_steps: int = 0, clip: float | None = 10.0) -> optax.GradientTransformation:
    """Adam on :func:`schedule`, gradients clipped to global norm ``clip``."""
    return optax.chain(*_clip(clip), optax.adam(schedule(lr, total_steps, lr_end, warmup_steps)))


def _clip(clip: float | None) -> list:
    return [optax.clip_by_global_norm(clip)] if clip else []


def _adam(clip: float | None) -> optax.GradientTransformation:
    return optax.chain(*_clip(clip), optax.scale_by_adam())  # the LR comes per step


def loss_and_grads(model: Model, loss: Loss, params: Params, batch: Any, key: jax.Array):
    """``((loss, stats), grads)`` of the training-mode forward pass."""
    return jax.value_and_grad(lambda p: loss(model.train_apply(p, batch, key), batch),
                              has_aux=True)(params)


def make_step(model: Model, loss: Loss, optimizer: optax.GradientTransformation):
    """Pure step ``(params, opt_state, batch, key) -> (params, opt_state, loss, stats)`` of one
    model with an optimizer that carries its own schedule (not jitted, so it can be vmapped)."""

    def step(params, opt_state, batch, key):
        (value, stats), grads = loss_and_grads(model, loss, params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, stats

    return step


def where_members(active: jax.Array, new: Any, old: Any) -> Any:
    """``new`` for members with ``active`` (N,) True, ``old`` for the others."""
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(jnp.reshape(active, (-1,) + (1,) * (jnp.ndim(a) - 1)), a, b),
        new, old)


def members(fn: Callable, *args: Any) -> Any:
    """``fn`` over the leading member axis of every argument: ``vmap`` for a committee, a plain
    call for a committee of one (XLA on CPU makes vmapped scatters of one member several
    times slower than the unbatched ones: 5.5x for a PaiNN training step on mlearn-Cu)."""
    leaves = jax.tree_util.tree_leaves(args)
    if leaves and len(leaves[0]) > 1:
        return jax.vmap(fn)(*args)
    first_ = jax.tree_util.tree_map(lambda x: x[0], args)
    return jax.tree_util.tree_map(lambda x: x[None], fn(*first_))


_select_members = jax.jit(where_members)  # one program instead of one op per leaf


def compiled_step(model: Model, loss: Loss, clip: float | None, ema_decay: float | None,
                  split: bool = False):
    """The jitted committee step, cached per (model, loss, clip, ema_decay, split):

    ``(params, opt_state, ema, batches, key, counter, active, lr) -> (params, opt_state, ema,
    loss, stats)``; every argument but ``key`` (the run's key) and ``counter`` (the step
    number) has a leading member axis (``ema`` is None without EMA). Member keys are
    ``split(fold_in(key, counter), N)``, derived on the device. Members with ``active``
    False keep params, optimizer state and EMA. With ``split`` every member's batch is a
    global batch of :mod:`jaxmat.core.parallel` (a leading device axis)."""
    return _compiled_step(model, loss, clip, ema_decay, bool(split))


@functools.lru_cache(maxsize=64)
def _compiled_step(model: Model, loss: Loss, clip: float | None, ema_decay: float | None,
                   split: bool):
    tx = _adam(clip)
    grads_of = parallel.loss_and_grads if split else loss_and_grads

    def member(params, opt_state, ema, batch, key, active, lr):
        (value, stats), grads = grads_of(model, loss, params, batch, key)
        updates, new_state = tx.update(grads, opt_state, params)
        new = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: -lr * u, updates))
        keep = functools.partial(jax.tree_util.tree_map, lambda a, b: jnp.where(active, a, b))
        if ema_decay is not None:
            ema = keep(jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                              ema, new), ema)
        return keep(new, params), keep(new_state, opt_state), ema, value, stats

    def step(params, opt_state, ema, batches, key, counter, active, lr):
        keys = jax.random.split(jax.random.fold_in(key, counter), active.shape[0])
        return members(member, params, opt_state, ema, batches, keys, active, lr)

    return jax.jit(step, donate_argnums=(0, 1, 2))


def init_opt_state(params: Params, clip: float | None) -> Any:
    """Optimizer state of :func:`compiled_step` for committee ``params``."""
    return jax.vmap(_adam(clip).init)(params)


def compiled_eval(model: Model, loss: Loss, split: bool = False):
    """Jitted ``(params, batch) -> (loss (N,), stats, mean_loss, mean_stats)``, cached per
    (model, loss, split): every member on one shared batch (with ``split``, a global batch of
    :mod:`jaxmat.core.parallel`), and the committee-mean outputs."""
    return _compiled_eval(model, loss, bool(split))


@functools.lru_cache(maxsize=64)
def _compiled_eval(model: Model, loss: Loss, split: bool):
    def apply(p, batch):
        return parallel.apply(model.apply, p, batch) if split else model.apply(p, batch)

    def evaluate(params, batch):
        leaves = jax.tree_util.tree_leaves(params)  # none for a model without parameters
        if not leaves or len(leaves[0]) == 1:
            outs = members(lambda p: apply(p, batch), params)
        else:
            outs = jax.vmap(apply, in_axes=(0, None))(params, batch)
        flat = parallel.merge(batch) if split else batch
        value, stats = jax.vmap(loss, in_axes=(0, None))(outs, flat)
        mean_value, mean_stats = loss(jax.tree_util.tree_map(lambda x: jnp.mean(x, 0), outs),
                                      flat)
        return value, stats, mean_value, mean_stats

    return jax.jit(evaluate)


# --------------------------------------------------------------------------- metrics
def reduce_stats(stats_list: list[dict]) -> dict[str, float]:
    """Pool ``(sum, count)`` stats over batches: ``{name: sum / count}``."""
    out: dict[str, float] = {}
    for name in stats_list[0] if stats_list else ():
        s = sum(float(st[name][0]) for st in stats_list)
        c = sum(float(st[name][1]) for st in stats_list)
        out[name] = s / c if c else float("nan")
    return out


def n_real(batch: Any) -> float:
    """Number of real (unpadded) entries of a batch: graphs of a GraphsTuple, rows of a
    dict batch with a ``"mask"``; 1 when the batch carries no mask."""
    g = getattr(batch, "globals", None)
    mask = g.get("mask") if isinstance(g, dict) else None
    if mask is None and isinstance(batch, dict):
        mask = batch.get("mask")
    return float(np.sum(np.asarray(mask))) if mask is not None else 1.0


def batches(data: Any, epoch: int = 0) -> Iterable:
    """The batches of ``epoch`` of a loader (``.epoch(k)``) or a fixed list of batches."""
    return data.epoch(epoch) if hasattr(data, "epoch") else data


def _split_members(stats_list: list[dict], n: int) -> list[list[dict]]:
    host = jax.device_get(stats_list)
    return [[{k: (v[0][m], v[1][m]) for k, v in st.items()} for st in host] for m in range(n)]


def evaluate(model: Model, params: Params, data: Iterable, loss: Loss, *, split: bool = False,
             put: Callable = lambda t: t) -> dict[str, Any]:
    """Metrics of committee ``params`` over shared batches: ``{name: np.ndarray (N,)}`` for
    ``loss`` and each stat, and ``committee_<name>`` (float) for the committee-mean outputs.
    Stats pool their sums and counts; losses are averaged with the number of real entries
    of each batch as weight (a half-empty last batch counts half). ``split``: the batches are
    global batches of :mod:`jaxmat.core.parallel`, placed by ``put``."""
    fn = compiled_eval(model, loss, split)
    stats, mstats, losses, mlosses, weights = [], [], [], [], []
    for b in data:
        value, st, mvalue, mst = parallel.gather(fn(params, put(b)))
        stats.append(st)
        mstats.append(mst)
        losses.append(np.asarray(value))
        mlosses.append(float(mvalue))
        weights.append(n_real(b))
    if not losses:
        raise ValueError("evaluation data yields no batches")
    per = [reduce_stats(s) for s in _split_members(stats, len(losses[0]))]
    out: dict[str, Any] = {k: np.array([p[k] for p in per]) for k in per[0]}
    w = np.asarray(weights) / max(float(np.sum(weights)), 1e-300)
    out["loss"] = np.tensordot(w, np.asarray(losses), axes=1)
    out.update({f"committee_{k}": v for k, v in reduce_stats(mstats).items()})
    out["committee_loss"] = float(w @ np.asarray(mlosses))
    return out


# --------------------------------------------------------------------------- config, results
# The default schedule: DEFAULT_PASSES passes over the training set at DEFAULT_LR (batch 16,
# jaxmat.core.ensemble.CommitteeConfig), at least DEFAULT_MIN_STEPS and at most
# DEFAULT_MAX_STEPS optimiser steps; chosen on the validation split of ammonia (100-800
# passes x lr 1e-3 / 3e-3, benchmarks/defaults.py and results/defaults.md): lr 3e-3 won at
# every length, and 5,600 steps beat 2,800 (val force MAE 12.9 vs 17.1 meV/Å), hence the
# floor of 6,000 steps for small sets.
DEFAULT_PASSES = 400
DEFAULT_MIN_STEPS = 6000
DEFAULT_MAX_STEPS = 40000
DEFAULT_LR = 3e-3


def default_steps(steps_per_epoch: int) -> int:
    """Optimiser steps of a run that sets neither ``steps`` nor ``epochs``:
    ``DEFAULT_PASSES`` epochs, clipped to [``DEFAULT_MIN_STEPS``, ``DEFAULT_MAX_STEPS``]."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return int(np.clip(DEFAULT_PASSES * steps_per_epoch, DEFAULT_MIN_STEPS, DEFAULT_MAX_STEPS))


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
        for k in ("epochs", "steps"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ValueError(f"{k} must be >= 1, got {v}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if not self.converge_tol >= 0:
            raise ValueError(f"converge_tol must be >= 0, got {self.converge_tol}")

    def requested_steps(self, steps_per_epoch: int) -> int:
        """The schedule's optimiser steps before any time budget, in whole epochs."""
        if self.steps is not None:
            n = self.steps
        elif self.epochs is not None:
            n = self.epochs * steps_per_epoch
        else:
            n = default_steps(steps_per_epoch)
        return math.ceil(n / steps_per_epoch) * steps_per_epoch


@dataclasses.dataclass
class FitResult:
    params: Params  # best parameters (by the monitored validation metric)
    last_params: Params
    history: list[dict]
    best_epoch: int
    best_metric: float
    stopped_early: bool
    seconds: float
    timed_out: bool = False  # stopped by ``max_minutes``
    convergence: dict | None = None  # :func:`convergence` of the run


@dataclasses.dataclass
class CommitteeFitResult:
    params: Params  # per-member best parameters, stacked (N, ...)
    last_params: Params
    history: list[dict]  # per epoch; per-member metrics are lists of length N
    best_epoch: list[int]
    best_metric: list[float]
    stopped_early: list[bool]
    seconds: float
    timed_out: bool = False
    convergence: dict | None = None


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
            same = (sched.get("requested_steps") == self.requested_steps
                    and sched.get("max_minutes") == self.config.max_minutes)
            if same:  # the same settings: keep the plan made from the first epochs' times
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


# --------------------------------------------------------------------------- tree helpers
# --------------------------------------------------------------------------- the loop
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
    dp = data_parallel
    if dp is not None:
        put = dp.params
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
                metric = np.asarray(val[cfg.monitor], dtype=float)
            else:
                metric = np.asarray(row["train_loss"], dtype=float)
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
    if epochs * r.steps_per_epoch == r.total_steps:
        return False
    r.total_steps = epochs * r.steps_per_epoch
    return True


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
    stopped = bool(r.stopped.all())  # early stopping ended every member: converged
    out = {"converged": stopped or fall <= cfg.converge_tol, "metric": key,
           "best_epoch": best, "epochs": n, "steps": int(np.max(r.steps)),
           "total_steps": r.total_steps, "requested_steps": r.requested_steps,
           "best_in_last_10pct": bool(n and best > 0.9 * n),
           "recent_fall": fall, "window_epochs": window, "tol": cfg.converge_tol,
           "timed_out": r.timed_out, "message": ""}
    if not out["converged"]:
        raise_key = ("fit.max_minutes" if cfg.max_minutes is not None
                     and r.total_steps < r.requested_steps else
                     "fit.steps" if cfg.epochs is None else "fit.epochs")
        out["raise"] = raise_key
        out["message"] = (
            f"training has not converged: the best {key} is at epoch {best} of {n} (step "
            f"{int(np.max(r.steps))} of {r.total_steps}) and it fell {100 * fall:.1f} % over "
            f"the last {window} epochs (tolerance {100 * cfg.converge_tol:g} %); raise "
            f"{raise_key}")
    return out


def _train_epoch(r: Run, model: Model, loss: Loss, loader: Any, put: Callable,
                 lrs: np.ndarray, spe: int, dp: parallel.DataParallel | None = None) -> dict:
    """One epoch of committee steps; the row of per-member training metrics."""
    step = compiled_step(model, loss, r.config.clip, r.config.ema_decay, dp is not None)
    put_batch = dp.batch if dp is not None else put
    key0 = jax.random.key(r.config.seed)
    s = r.state
    stats, losses, actives = [], [], []
    for k, (b, act) in enumerate(loader.epoch(r.epoch)):
        act = act & ~r.stopped
        lr = lrs[np.minimum(r.steps, len(lrs) - 1)]
        r.steps = r.steps + act
        s["params"], s["opt_state"], ema, value, st = step(
            s["params"], s["opt_state"], s.get("ema"), put_batch(b), key0,
            np.int32(r.epoch * spe + k), put(act), put(lr))
        if ema is not None:
            s["ema"] = ema
        stats.append(st)
        losses.append(value)
        actives.append(act)
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
