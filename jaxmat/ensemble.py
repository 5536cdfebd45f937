"""Committees (ensembles) as a leading member axis on the params pytree.

``params = init(model, key, batch, n)`` has shape ``(n, ...)`` on every leaf;
``apply(model, params, batch)`` evaluates all members in one ``vmap`` and returns the
per-member outputs stacked on axis 0; :func:`stats` gives mean and variance.
Training (:func:`fit`) updates all members in one jitted, vmapped step, each member with its
own data order (:class:`CommitteeLoader`); :func:`shard_members` spreads the member axis
over devices with :mod:`jax.sharding`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmat import graph, train
from jaxmat.checkpoint import Checkpointer
from jaxmat.protocol import Model, Outputs, Params


def size(params: Params) -> int:
    """Number of members (the leading axis shared by every leaf)."""
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree_util.tree_leaves(params)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"committee params must share one leading member axis, got sizes {sizes}")
    return sizes.pop()


def is_committee(model: Model, params: Params, example) -> bool:
    """True if every leaf of ``params`` has one more (leading) axis than ``model.init`` gives
    on ``example`` (a committee of ``model``), False if they match it; ValueError otherwise."""
    single = jax.eval_shape(model.init, jax.random.key(0), example)
    got = [tuple(jnp.shape(x)) for x in jax.tree_util.tree_leaves(params)]
    ref = [tuple(x.shape) for x in jax.tree_util.tree_leaves(single)]
    if len(got) != len(ref):
        raise ValueError(f"params have {len(got)} arrays but the model expects {len(ref)}")
    if got == ref:
        return False
    if all(g[1:] == r for g, r in zip(got, ref)):
        size(params)
        return True
    raise ValueError("params match neither the model's shapes nor a committee of them "
                     "(a leading member axis)")


def init(model: Model, key: jax.Array, example_batch, n_members: int) -> Params:
    """``n_members`` independent initialisations (one key each), stacked on axis 0. Member
    m's key does not depend on ``n_members``, so the first k members of a committee (and,
    after :func:`fit`, their training) are those of a committee of k."""
    if n_members < 1:
        raise ValueError(f"committee size must be >= 1, got {n_members}")
    keys = jax.random.split(key, n_members)
    return jax.vmap(lambda k: model.init(k, example_batch))(keys)


def apply(model: Model, params: Params, batch) -> Outputs:
    """Every member on the same batch: each output gains a leading member axis."""
    size(params)
    return jax.vmap(model.apply, in_axes=(0, None))(params, batch)


def stats(outputs: Outputs, keys: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
    """Committee mean and variance of per-member outputs: ``{k}_mean``, ``{k}_var``.

    For ``forces`` (M, N, 3) also ``forces_var_atom`` (N,): the variance summed over xyz.
    """
    out = {}
    for k in keys or tuple(outputs):
        v = outputs[k]
        out[f"{k}_mean"] = jnp.mean(v, axis=0)
        out[f"{k}_var"] = jnp.var(v, axis=0)
    if "forces_var" in out:
        out["forces_var_atom"] = jnp.sum(out["forces_var"], axis=-1)
    return out


def member(params: Params, k: int) -> Params:
    """The parameters of member ``k``."""
    return jax.tree_util.tree_map(lambda x: x[k], params)


def stack(members: list[Params]) -> Params:
    """Stack single-model params into committee params."""
    if not members:
        raise ValueError("cannot stack an empty list of members")
    try:
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)
    except ValueError as err:
        raise ValueError(f"cannot stack members with different structures or shapes: {err}") from None


def check_finite(outputs: Outputs) -> Outputs:
    """Raise ``ValueError`` naming the output and the members that gave NaN/inf.

    ``outputs`` are per-member outputs (leading member axis); returns them unchanged.
    Call it outside ``jit`` (it reads the values on the host).
    """
    for k, v in outputs.items():
        v = np.asarray(v)
        if v.size and not np.all(np.isfinite(v)):
            bad = np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1)) if v.ndim else []
            raise ValueError(f"non-finite (NaN/inf) predictions in '{k}' from member(s) "
                             f"{[int(b) for b in bad]}")
    return outputs


# --------------------------------------------------------------------------- multi-device
def member_mesh(devices: Sequence[Any] | None = None, axis: str = "members") -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` over ``devices`` (default: all) named ``axis``."""
    devs = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devs.reshape(-1), (axis,))


def shard_members(tree: Any, mesh: Mesh, axis: str | None = None) -> Any:
    """Place a committee pytree (params, optimizer state, stacked batches, keys) so that its
    leading member axis is split over the mesh axis ``axis`` (default: the mesh's first axis).

    Every leaf must have a leading axis divisible by the number of devices on that axis.
    Jitted functions of the result run member-parallel; results keep the sharding.
    """
    axis = axis or mesh.axis_names[0]
    n_dev = mesh.shape[axis]
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def put(x):
        if jnp.ndim(x) == 0:
            raise ValueError("cannot shard a scalar leaf over the member axis")
        if jnp.shape(x)[0] % n_dev:
            raise ValueError(f"member axis of length {jnp.shape(x)[0]} is not divisible by the "
                             f"{n_dev} devices of mesh axis '{axis}'")
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(put, tree)


# --------------------------------------------------------------------------- training
class CommitteeLoader:
    """Fixed-shape training batches for N members, stacked on a leading member axis.

    Member ``m`` sees its own permutation of the training set every epoch (from
    ``(seed, m, epoch)``) and, with ``bootstrap=True``, its own resample drawn once with
    replacement (from ``(seed, m)``). All members share one padding :class:`graph.Budget`,
    so the stacked batch has fixed shapes. Epochs last as many steps as the member with the
    most batches; the others repeat their last batch with ``active=False`` (update skipped).

    ``data`` is a list of :class:`graph.Record`, a :class:`graph.GraphLoader` (its records,
    batch size, budget, seed and ``shuffle`` are used) or a fixed list of same-shape batches
    (any pytree; each member then permutes/resamples whole batches).
    ``epoch(k)`` yields ``(stacked_batch, active)`` with ``active`` a bool array (N,).
    """

    def __init__(self, data: Any, n_members: int, batch_size: int = 32,
                 budget: graph.Budget | None = None, seed: int = 0, bootstrap: bool = False,
                 shuffle: bool = True):
        if n_members < 1:
            raise ValueError(f"committee size must be >= 1, got {n_members}")
        if isinstance(data, graph.GraphLoader):
            batch_size, budget, seed, shuffle = data.batch_size, data.budget, data.seed, data.shuffle
            data = data.records
        data = list(data)
        if not data:
            raise ValueError("committee training data is empty")
        self.records = data if isinstance(data[0], graph.Record) else None
        self.batches = None if self.records is not None else data
        if self.records is not None:
            self.budget = budget or graph.estimate_budget(self.records, batch_size)
        else:
            self.budget = None
            shapes = {tuple(np.shape(x) for x in jax.tree_util.tree_leaves(b)) for b in data}
            if len(shapes) != 1:
                raise ValueError("a fixed list of training batches must share one shape; "
                                 "pad them to one budget")
        self.n_members, self.batch_size, self.seed = n_members, batch_size, seed
        self.bootstrap, self.shuffle = bootstrap, shuffle
        n = len(data)
        self._members = [
            np.sort(np.random.default_rng([seed, m]).integers(0, n, n)) if bootstrap
            else np.arange(n) for m in range(n_members)
        ]

    def __len__(self) -> int:
        """Steps per epoch (the member with the most batches)."""
        return self.groups(0)[1]

    def member_indices(self, m: int) -> np.ndarray:
        """Training items of member ``m`` (with repeats under bootstrap)."""
        return self._members[m]

    def order(self, m: int, epoch: int) -> np.ndarray:
        idx = self._members[m]
        if not self.shuffle:
            return idx
        return idx[np.random.default_rng([self.seed, m, epoch]).permutation(len(idx))]

    def groups(self, epoch: int) -> tuple[list[list[list[int]]], int]:
        """Per-member lists of item groups for ``epoch`` and the number of steps."""
        per = []
        for m in range(self.n_members):
            order = self.order(m, epoch)
            if self.records is not None:
                per.append(graph.pack(self.records, self.budget, order))
            else:
                per.append([[int(k)] for k in order])
        return per, max(len(g) for g in per)

    def _one(self, grp: list[int]) -> Any:
        if self.records is not None:
            return graph.batch([self.records[k] for k in grp], self.budget)
        return self.batches[grp[0]]

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Any, np.ndarray]]:
        per, n_steps = self.groups(epoch)
        for s in range(n_steps):
            items = [self._one(g[min(s, len(g) - 1)]) for g in per]
            active = np.array([s < len(g) for g in per])
            yield jax.tree_util.tree_map(lambda *xs: np.stack(xs), *items), active

    def __iter__(self) -> Iterator[tuple[Any, np.ndarray]]:
        return self.epoch(0)


def _where_members(active: jax.Array, new: Any, old: Any) -> Any:
    def sel(a, b):
        return jnp.where(active.reshape((-1,) + (1,) * (jnp.ndim(a) - 1)), a, b)

    return jax.tree_util.tree_map(sel, new, old)


def make_step(model: Model, loss: train.Loss, optimizer: optax.GradientTransformation):
    """Committee training step, vmapped over members (jit it once):

    ``(params, opt_state, batches, keys, active) -> (params, opt_state, loss (N,), stats)``.
    Every argument carries a leading member axis; members with ``active=False`` keep their
    params and optimizer state (early-stopped members, filler steps).
    """
    step = jax.vmap(train.make_step(model, loss, optimizer))

    def committee_step(params, opt_state, batches, keys, active):
        new_p, new_s, value, stats = step(params, opt_state, batches, keys)
        return (_where_members(active, new_p, params), _where_members(active, new_s, opt_state),
                value, stats)

    return committee_step


def make_eval(model: Model, loss: train.Loss):
    """Committee evaluation ``(params, batch) -> (loss (N,), stats, mean_loss, mean_stats)``:
    every member on one shared batch, plus the loss of the committee-mean outputs."""

    def evaluate(params, batch):
        outs = apply(model, params, batch)
        value, stats = jax.vmap(loss, in_axes=(0, None))(outs, batch)
        mean_out = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), outs)
        mean_value, mean_stats = loss(mean_out, batch)
        return value, stats, mean_value, mean_stats

    return evaluate


def _split_members(stats_list: list[dict], n: int) -> list[list[dict]]:
    host = jax.device_get(stats_list)
    return [[{k: (v[0][m], v[1][m]) for k, v in st.items()} for st in host] for m in range(n)]


def evaluate(model: Model, params: Params, batches: Iterable, loss: train.Loss,
             _fn: Callable | None = None) -> dict[str, Any]:
    """Per-member metrics over shared ``batches``: ``{name: np.ndarray (N,)}`` for ``loss``
    and each stat, plus ``committee_<name>`` (float) for the committee-mean prediction."""
    n = size(params)
    fn = _fn or jax.jit(make_eval(model, loss))
    stats, mstats, losses, mlosses, weights = [], [], [], [], []
    for b in batches:
        value, st, mvalue, mst = fn(params, b)
        stats.append(st)
        mstats.append(mst)
        losses.append(np.asarray(value))
        mlosses.append(float(mvalue))
        weights.append(train._n_real(b))
    if not losses:
        raise ValueError("evaluation data yields no batches")
    per = [train._reduce(s) for s in _split_members(stats, n)]
    out: dict[str, Any] = {k: np.array([p[k] for p in per]) for k in per[0]}
    w = np.asarray(weights) / max(float(np.sum(weights)), 1e-300)  # batch-size weights
    out["loss"] = np.tensordot(w, np.asarray(losses), axes=1)
    out.update({f"committee_{k}": v for k, v in train._reduce(mstats).items()})
    out["committee_loss"] = float(w @ np.asarray(mlosses))
    return out


@dataclasses.dataclass
class CommitteeConfig(train.FitConfig):
    """:class:`jaxmat.train.FitConfig` plus ``batch_size`` (graphs per member step, used when
    training data are records) and an optional ``mesh`` to shard the member axis on.
    ``patience`` and ``monitor`` act per member; ``seed`` sets the member data orders."""

    batch_size: int = 32
    mesh: Any = None


@dataclasses.dataclass
class CommitteeFitResult:
    params: Params  # per-member best parameters, stacked (N, ...)
    last_params: Params
    history: list[dict]  # per epoch; per-member metrics are lists of length N
    best_epoch: list[int]
    best_metric: list[float]
    stopped_early: list[bool]
    seconds: float


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _flatten_row(row: dict) -> dict:
    flat = {}
    for k, v in row.items():
        if isinstance(v, (list, tuple)):
            flat.update({f"{k}_m{m}": x for m, x in enumerate(v)})
        else:
            flat[k] = v
    return flat


def fit(
    model: Model,
    params: Params,
    train_data: Any,
    val_data: Any | None = None,
    loss: train.Loss | None = None,
    config: train.FitConfig | None = None,
    bootstrap: bool = False,
    max_epochs: int | None = None,
) -> CommitteeFitResult:
    """Train every member of committee ``params`` (leading member axis) in one jitted step.

    ``train_data``: records, a :class:`graph.GraphLoader`, a list of same-shape batches, or a
    :class:`CommitteeLoader`; each member gets its own data order (and resample with
    ``bootstrap``). ``val_data`` (loader or list of batches) is shared; metrics, best params and
    early stopping (``config.patience`` on ``config.monitor``) are per member, and a stopped
    member's updates are masked out. ``config.checkpoint_dir`` saves the whole committee (orbax)
    every ``config.checkpoint_every`` epochs and at the end; a later call resumes from it. ``max_epochs`` caps the epochs of this call.
    Returns per-member best params stacked in ``result.params``.
    """
    cfg = config or CommitteeConfig()
    loss = loss or train.energy_force_loss()
    n = size(params)
    if isinstance(train_data, CommitteeLoader):
        loader = train_data
        if loader.n_members != n:
            raise ValueError(f"loader built for {loader.n_members} members, params have {n}")
    else:
        loader = CommitteeLoader(train_data, n, getattr(cfg, "batch_size", 32), seed=cfg.seed,
                                 bootstrap=bootstrap)
    mesh = getattr(cfg, "mesh", None)
    put = (lambda t: shard_members(t, mesh)) if mesh is not None else (lambda t: t)
    steps_per_epoch = len(loader)
    optimizer = train.make_optimizer(cfg.lr, cfg.epochs * steps_per_epoch, cfg.lr_end,
                                     cfg.warmup_epochs * steps_per_epoch, cfg.clip)
    step_fn = jax.jit(make_step(model, loss, optimizer), donate_argnums=(0, 1))
    eval_fn = jax.jit(make_eval(model, loss))

    params = put(jax.tree_util.tree_map(jnp.copy, params))
    opt_state = put(jax.vmap(optimizer.init)(params))
    state = {"params": params, "opt_state": opt_state,
             "best_params": jax.tree_util.tree_map(jnp.copy, params)}
    meta = {"epoch": 0, "best_metric": [None] * n, "best_epoch": [-1] * n,
            "bad_epochs": [0] * n, "history": []}
    ckpt = Checkpointer(cfg.checkpoint_dir, cfg.keep) if cfg.checkpoint_dir else None
    if ckpt is not None and ckpt.latest_step() is not None:
        _, state, meta = ckpt.restore(state)
        if len(meta["best_epoch"]) != n:
            ckpt.close()
            raise ValueError(f"checkpoint in {ckpt.directory} holds {len(meta['best_epoch'])} "
                             f"members, params have {n}")
        state = put(state)
    log_path = cfg.log_path or (os.path.join(ckpt.directory, "metrics.csv") if ckpt else None)

    params, opt_state, best_params = state["params"], state["opt_state"], state["best_params"]
    history = list(meta["history"])
    best = np.array([math.inf if b is None else b for b in meta["best_metric"]])
    best_epoch = np.array(meta["best_epoch"], dtype=int)
    bad = np.array(meta["bad_epochs"], dtype=int)
    patience = cfg.patience
    stopped = (bad >= patience) if patience is not None else np.zeros(n, bool)
    key0 = jax.random.key(cfg.seed)
    start = int(meta["epoch"])
    stop = cfg.epochs if max_epochs is None else min(cfg.epochs, start + max_epochs)
    t0 = time.perf_counter()
    bar = None
    if cfg.progress and stop > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, desc=f"fit x{n}", unit="epoch", leave=False,
                   mininterval=2.0)
    try:
        for epoch in range(start, stop):
            if stopped.all():
                break
            te = time.perf_counter()
            tr_stats, tr_loss, tr_active = [], [], []
            for k, (b, act) in enumerate(loader.epoch(epoch)):
                keys = jax.random.split(jax.random.fold_in(key0, epoch * steps_per_epoch + k), n)
                act = act & ~stopped
                params, opt_state, value, st = step_fn(params, opt_state, put(b), put(keys),
                                                       put(jnp.asarray(act)))
                tr_stats.append(st)
                tr_loss.append(value)
                tr_active.append(act)
            row: dict[str, Any] = {"epoch": epoch + 1, "time_s": 0.0}
            w = np.asarray(tr_active, dtype=float)
            losses = np.asarray(jax.device_get(tr_loss))
            per = [train._reduce([s for s, a in zip(sl, w[:, m]) if a])
                   for m, sl in enumerate(_split_members(tr_stats, n))]
            for name in sorted(set().union(*per)):
                row[f"train_{name}"] = [p.get(name, math.nan) for p in per]
            row["train_loss"] = [float(x) if c else math.nan for x, c in
                                 zip((w * losses).sum(0) / np.maximum(w.sum(0), 1), w.sum(0))]
            if val_data is not None:
                val = evaluate(model, params, train._batches(val_data, 0), loss, eval_fn)
                for name, v in val.items():
                    row[f"val_{name}"] = v.tolist() if isinstance(v, np.ndarray) else v
                metric = np.asarray(val[cfg.monitor], dtype=float)
            else:
                metric = np.asarray(row["train_loss"])
            row["active"] = [bool(not s) for s in stopped]
            row["time_s"] = time.perf_counter() - te
            bad_members = np.flatnonzero(~np.isfinite(metric) & ~stopped)
            if len(bad_members):
                raise FloatingPointError(f"non-finite {cfg.monitor} at epoch {epoch + 1} for "
                                         f"member(s) {bad_members.tolist()}")
            improved = (metric < best) & ~stopped
            if improved.any():
                best_params = _where_members(put(jnp.asarray(improved)), params, best_params)
            best = np.where(improved, metric, best)
            best_epoch = np.where(improved, epoch + 1, best_epoch)
            bad = np.where(improved | stopped, np.where(improved, 0, bad), bad + 1)
            history.append(row)
            meta = {"epoch": epoch + 1, "best_metric": [_json_float(x) for x in best],
                    "best_epoch": best_epoch.tolist(), "bad_epochs": bad.tolist(),
                    "history": history}
            if patience is not None:
                stopped = stopped | (bad >= patience)
            last = epoch + 1 == stop or stopped.all()
            if ckpt is not None and ((epoch + 1) % getattr(cfg, "checkpoint_every", 1) == 0
                                     or last):
                ckpt.save(epoch + 1, {"params": params, "opt_state": opt_state,
                                      "best_params": best_params}, meta)
            if log_path:
                train._append_csv(log_path, _flatten_row(row))
            if bar is not None:
                bar.update(1)
                bar.set_postfix({cfg.monitor: " ".join(f"{x:.3g}" for x in metric)})
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    return CommitteeFitResult(best_params, params, history, best_epoch.tolist(),
                              best.tolist(), stopped.tolist(), time.perf_counter() - t0)
