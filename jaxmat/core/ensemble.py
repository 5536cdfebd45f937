"""Committees (ensembles) as a leading member axis on the params pytree.

``params = init(model, key, batch, n)`` has shape ``(n, ...)`` on every leaf;
``apply(model, params, batch)`` evaluates all members in one ``vmap`` and returns the
per-member outputs stacked on axis 0; :func:`stats` gives mean and variance.
Training (:func:`fit`, the engine of :mod:`jaxmat.core.engine`) updates all members in one
jitted, vmapped step, each member with its own data order (:class:`CommitteeLoader`); :func:`shard_members` spreads the member axis
over devices with :mod:`jax.sharding`, and a ``("members", "data")`` mesh also splits every
member's batch (:mod:`jaxmat.core.parallel`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxmat.core import engine, graph, parallel
from jaxmat.core.committee import (  # noqa: F401  (evaluation of committees)
    apply, check_finite, init, is_committee, member, size, stack, stats)
from jaxmat.core.engine import (  # noqa: F401  (the committee training API)
    DEFAULT_BATCH, Callback, CommitteeFitResult, FitConfig, Loss, energy_force_loss, evaluate,
    where_members)
from jaxmat.core.protocol import Model, Params


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
    return parallel.shard(tree, mesh, (axis or mesh.axis_names[0],))


# --------------------------------------------------------------------------- training
class CommitteeLoader:
    """Fixed-shape training batches for N members, stacked on a leading member axis.

    Member ``m`` sees its own permutation of the training set every epoch (from
    ``(seed, m, epoch)``) and, with ``bootstrap=True``, its own resample drawn once with
    replacement (from ``(seed, m)``). All members share one padding :class:`graph.Budget`,
    so the stacked batch has fixed shapes. Epochs last as many steps as the member with the
    most batches; the others repeat their last batch with ``active=False`` (update skipped).

    ``data`` is a list of :class:`graph.Record`, a :class:`graph.GraphLoader` (its records,
    batch size, budget, layout, seed and ``shuffle`` are used) or a fixed list of same-shape batches
    (any pytree; each member then permutes/resamples whole batches).
    ``epoch(k)`` yields ``(stacked_batch, active)`` with ``active`` a bool array (N,).
    """

    def __init__(self, data: Any, n_members: int, batch_size: int = 32,
                 budget: graph.Budget | None = None, seed: int = 0, bootstrap: bool = False,
                 shuffle: bool = True, model: Model | None = None):
        if n_members < 1:
            raise ValueError(f"committee size must be >= 1, got {n_members}")
        self.layout = "sparse"
        if isinstance(data, graph.GraphLoader):
            batch_size, budget, seed, shuffle = data.batch_size, data.budget, data.seed, data.shuffle
            data, self.layout = data.records, data.layout
        data = list(data)
        if not data:
            raise ValueError("committee training data is empty")
        self.records = data if isinstance(data[0], graph.Record) else None
        if self.records is not None and model is not None:  # records of the model's spec
            self.records = data = graph.check_records(self.records, model.graph, model.name)
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
                per.append(graph.pack(self.records, self.budget, order, self.layout))
            else:
                per.append([[int(k)] for k in order])
        return per, max(len(g) for g in per)

    def batch_of(self, grp: list[int]) -> Any:
        """The padded batch of one group of items (of :meth:`groups`)."""
        if self.records is not None:
            return graph.batch([self.records[k] for k in grp], self.budget, layout=self.layout)
        return self.batches[grp[0]]

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Any, np.ndarray]]:
        per, n_steps = self.groups(epoch)
        for s in range(n_steps):
            items = [self.batch_of(g[min(s, len(g) - 1)]) for g in per]
            active = np.array([s < len(g) for g in per])
            yield jax.tree_util.tree_map(lambda *xs: np.stack(xs), *items), active

    def __iter__(self) -> Iterator[tuple[Any, np.ndarray]]:
        return self.epoch(0)


def make_step(model: Model, loss: Loss, optimizer: optax.GradientTransformation):
    """Committee step with an optimizer that carries its own schedule, vmapped over members
    (jit it once): ``(params, opt_state, batches, keys, active) -> (params, opt_state,
    loss (N,), stats)``; members with ``active=False`` keep params and optimizer state."""
    step = jax.vmap(engine.make_step(model, loss, optimizer))

    def committee_step(params, opt_state, batches, keys, active):
        new_p, new_s, value, st = step(params, opt_state, batches, keys)
        return (where_members(active, new_p, params), where_members(active, new_s, opt_state),
                value, st)

    return committee_step


@dataclasses.dataclass
class CommitteeConfig(FitConfig):
    """:class:`jaxmat.core.engine.FitConfig` plus ``batch_size`` (graphs per member step, used when
    training data are records) and an optional ``mesh``: a 1-D mesh shards the member axis;
    a mesh with axes ``("members", "data")`` (:func:`jaxmat.core.parallel.make_mesh`) also
    splits every member's batch over ``"data"`` (``data_parallel`` alone: a 1 x
    ``data_parallel`` mesh). ``patience`` and ``monitor`` act per member; ``seed`` sets the
    member data orders."""

    batch_size: int = DEFAULT_BATCH
    mesh: Any = None


def fit(
    model: Model,
    params: Params,
    train_data: Any,
    val_data: Any | None = None,
    loss: Loss | None = None,
    config: FitConfig | None = None,
    bootstrap: bool = False,
    max_epochs: int | None = None,
    callbacks: Iterable[Callback] = (),
) -> CommitteeFitResult:
    """Train every member of committee ``params`` (leading member axis) in one jitted step
    (:func:`jaxmat.core.engine.run`, compiled once per model, loss and shapes and reused).

    ``train_data``: records, a :class:`graph.GraphLoader`, a list of same-shape batches, or a
    :class:`CommitteeLoader`; each member gets its own data order (and resample with
    ``bootstrap``). ``val_data`` (records, a loader or a list of batches) is shared; metrics, best params and
    early stopping (``config.patience`` on ``config.monitor``) are per member, and a stopped
    member's updates are masked out. ``config.checkpoint_dir`` saves the whole committee (orbax)
    every ``config.checkpoint_every`` epochs and at the end; a later call resumes from it.
    ``max_epochs`` caps the epochs of this call. Returns per-member best params stacked.
    """
    cfg = config or CommitteeConfig()
    n = size(params)
    if isinstance(train_data, CommitteeLoader):
        loader = train_data
        if loader.n_members != n:
            raise ValueError(f"loader built for {loader.n_members} members, params have {n}")
    else:
        loader = CommitteeLoader(train_data, n, getattr(cfg, "batch_size", 32), seed=cfg.seed,
                                 bootstrap=bootstrap, model=model)
    if isinstance(val_data, (list, tuple)) and val_data and isinstance(val_data[0], graph.Record):
        val_data = graph.GraphLoader(val_data, getattr(cfg, "batch_size", 32), shuffle=False,
                                     model=model)
    mesh = getattr(cfg, "mesh", None)
    put = (lambda t: shard_members(t, mesh)) if mesh is not None else (lambda t: t)
    dp = parallel.for_config(cfg)
    if dp is not None:
        loader = parallel.CommitteeShards(loader, dp.devices)
        val_data = None if val_data is None else parallel.Shards(val_data, dp.devices)
    return engine.result(engine.run(model, params, loader, val_data,
                                    loss or energy_force_loss(), cfg, put=put,
                                    data_parallel=dp, callbacks=callbacks,
                                    max_epochs=max_epochs))
