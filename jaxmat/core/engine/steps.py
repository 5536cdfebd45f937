"""Compiled committee steps and evaluation: every member in one program (``vmap`` over the
leading member axis), cached per (model, loss, clip, EMA, split), with the learning rate an
argument computed on the host, so runs of any length share one compiled step."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmat.core import parallel
from jaxmat.core.committee import first, stack_one
from jaxmat.core.engine.losses import Loss
from jaxmat.core.engine.schedules import _adam
from jaxmat.core.protocol import Model, Params


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
    return stack_one(fn(*first(args)))


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
    apply = functools.partial(parallel.apply, model.apply) if split else model.apply

    def evaluate(params, batch):
        outs = members(lambda p: apply(p, batch), params)
        flat = parallel.merge(batch) if split else batch
        mean = jax.tree_util.tree_map(lambda x: jnp.mean(x, 0), outs)  # committee-mean outputs
        return (*jax.vmap(loss, in_axes=(0, None))(outs, flat), *loss(mean, flat))

    return jax.jit(evaluate)


def reduce_stats(stats_list: list[dict]) -> dict[str, float]:
    """Pool ``(sum, count)`` stats over batches: ``{name: sum / count}``."""
    out: dict[str, float] = {}
    for name in stats_list[0] if stats_list else ():
        s, c = (sum(float(st[name][i]) for st in stats_list) for i in (0, 1))
        out[name] = s / c if c else float("nan")
    return out


def n_real(batch: Any) -> float:
    """Number of real (unpadded) entries of a batch: graphs of a GraphsTuple, rows of a
    dict batch with a ``"mask"``; 1 when the batch carries no mask."""
    g = getattr(batch, "globals", batch)  # a dict batch carries its mask itself
    mask = g.get("mask") if isinstance(g, dict) else None
    return float(np.sum(np.asarray(mask))) if mask is not None else 1.0


def batches(data: Any, epoch: int = 0) -> Iterable:
    """The batches of ``epoch`` of a loader (``.epoch(k)``) or a fixed list of batches."""
    return data.epoch(epoch) if hasattr(data, "epoch") else data


def _split_members(stats_list: list[dict], n: int) -> list[list[dict]]:
    """Per-batch stats with a member axis as ``n`` lists of one member's stats (on the host)."""
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
    outs, weights = [], []
    for b in data:
        outs.append(parallel.gather(fn(params, put(b))))
        weights.append(n_real(b))
    if not outs:
        raise ValueError("evaluation data yields no batches")
    losses, stats, mlosses, mstats = zip(*outs)
    losses, mlosses = np.asarray(losses), np.asarray(mlosses)
    per = [reduce_stats(s) for s in _split_members(stats, len(losses[0]))]
    out: dict[str, Any] = {k: np.array([p[k] for p in per]) for k in per[0]}
    w = np.asarray(weights) / max(float(np.sum(weights)), 1e-300)
    out["loss"] = np.tensordot(w, losses, axes=1)
    out.update({f"committee_{k}": v for k, v in reduce_stats(mstats).items()})
    out["committee_loss"] = float(w @ mlosses)
    return out
