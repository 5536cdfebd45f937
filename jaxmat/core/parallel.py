"""Data-parallel training over several devices: each step's batch (graphs) is split over the
mesh axis ``"data"`` and, for committees, the member axis over ``"members"``.

A data-parallel step takes a *global batch*: one padded sub-batch per device, stacked on a
leading device axis; every sub-batch is padded to one per-device :class:`graph.Budget`, so
the step compiles once. The model runs on each sub-batch (``vmap`` over the device axis;
with that axis sharded, XLA runs each sub-batch on its own device), then outputs and
sub-batches are merged (:func:`merge`) into one batch of all their graphs and the loss is
that batch's loss: the masked means run over the global batch, so loss and gradients equal
those of one device on the same graphs (XLA sums the per-device parts across devices).
:func:`jaxmat.core.train.fit` and :func:`jaxmat.core.ensemble.fit` use it through
``FitConfig.data_parallel`` / ``CommitteeConfig.mesh``; there is no second training loop.

Several hosts: after ``jax.distributed.initialize()`` the mesh spans every host's devices;
each host draws the same batches (same seed) and copies only its own devices' parts
(:func:`shard`); :func:`gather` reads results spread over hosts.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmat.core import graph

DATA, MEMBERS = "data", "members"


# --------------------------------------------------------------------------- meshes, placement
def make_mesh(data: int, members: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(members, data)`` mesh with axes ``("members", "data")`` over the first
    ``members * data`` of ``devices`` (default: ``jax.devices()``, every host's after
    ``jax.distributed.initialize()``, host by host). A member's ``data`` devices are
    neighbours (one host where they fit): gradients are averaged among them, while members
    never communicate."""
    devs = list(jax.devices() if devices is None else devices)
    if data < 1 or members < 1:
        raise ValueError(f"mesh sizes must be >= 1, got members={members}, data={data}")
    if members * data > len(devs):
        raise ValueError(f"a mesh of {members} members x {data} data devices needs "
                         f"{members * data} devices, found {len(devs)}")
    return Mesh(np.asarray(devs[:members * data]).reshape(members, data), (MEMBERS, DATA))


def shard(tree: Any, mesh: Mesh, axes: Sequence[str | None]) -> Any:
    """Place every leaf with its leading axes split over the mesh axes ``axes`` (``None``:
    not split) and replicated over the others. ValueError for a leaf with too few axes or
    an axis not divisible by its devices."""
    sharding = NamedSharding(mesh, PartitionSpec(*axes))

    def put(x):
        if jnp.ndim(x) < len(axes):
            raise ValueError(f"cannot shard a leaf of shape {jnp.shape(x)} over the mesh axes "
                             f"{tuple(axes)}")
        for size, name in zip(jnp.shape(x), axes):
            if name is not None and size % mesh.shape[name]:
                raise ValueError(f"axis of length {size} is not divisible by the "
                                 f"{mesh.shape[name]} devices of mesh axis '{name}'")
        return _place(x, sharding)

    return jax.tree_util.tree_map(put, tree)


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` on ``sharding``; on several hosts each host copies only the parts of its own
    devices from its (identical) host value."""
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Where a data-parallel fit puts its arrays on ``mesh`` (axes ``"members"``, ``"data"``;
    a missing ``"members"`` axis replicates the members)."""

    mesh: Mesh

    def __post_init__(self):
        extra = set(self.mesh.axis_names) - {MEMBERS, DATA}
        if DATA not in self.mesh.axis_names or extra:
            raise ValueError(f"a data-parallel mesh needs the axis '{DATA}' (and optionally "
                             f"'{MEMBERS}'), got {self.mesh.axis_names}")

    @property
    def devices(self) -> int:
        """Devices along the batch axis."""
        return self.mesh.shape[DATA]

    @property
    def _members(self) -> str | None:
        return MEMBERS if MEMBERS in self.mesh.axis_names else None

    def params(self, tree: Any) -> Any:
        """Member-axis trees (params, optimizer state, ``active``, learning rates)."""
        return shard(tree, self.mesh, (self._members,))

    def batch(self, tree: Any) -> Any:
        """Stacked training batches ``(members, devices, ...)``."""
        return shard(tree, self.mesh, (self._members, DATA))

    def shared(self, tree: Any) -> Any:
        """Batches every member sees (validation), ``(devices, ...)``."""
        return shard(tree, self.mesh, (DATA,))


def for_config(cfg: Any) -> DataParallel | None:
    """The placement of a fit config: ``cfg.mesh`` when it has a ``"data"`` axis (then
    ``cfg.data_parallel`` must be 1 or its size), else a 1 x ``cfg.data_parallel`` mesh;
    ``None`` for one device."""
    d = getattr(cfg, "data_parallel", 1)
    mesh = getattr(cfg, "mesh", None)
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"data_parallel must be an integer >= 1, got {d!r}")
    if mesh is not None and DATA in mesh.axis_names:
        if d not in (1, mesh.shape[DATA]):
            raise ValueError(f"data_parallel={d} but the mesh has {mesh.shape[DATA]} devices "
                             f"on its '{DATA}' axis")
        return DataParallel(mesh)
    if d == 1:
        return None
    if mesh is not None:
        raise ValueError(f"data_parallel={d} with a committee mesh needs the mesh axes "
                         f"('{MEMBERS}', '{DATA}'), got {mesh.axis_names}")
    return DataParallel(make_mesh(d))


def gather(tree: Any) -> Any:
    """``tree`` readable on this host: on several hosts, arrays spread over other hosts'
    devices are gathered to numpy; unchanged on one host."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree_util.tree_map(get, tree)


# --------------------------------------------------------------------------- the step
def n_devices(batch: Any) -> int:
    """Length of the leading device axis of a global batch."""
    return jax.tree_util.tree_leaves(batch)[0].shape[0]


def merge(tree: Any) -> Any:
    """Sub-batches (or their outputs) with a leading device axis as one batch of all their
    graphs: leaves ``(D, X, ...) -> (D * X, ...)``; a :class:`jraph.GraphsTuple` gets its
    node, edge and graph indices offset per device, so it is a valid batch again."""
    if isinstance(tree, jraph.GraphsTuple):
        d, n_graph = tree.n_node.shape[:2]
        n_node, n_edge = tree.nodes["mask"].shape[1], tree.senders.shape[1]

        def off(x, size):
            return x + (jnp.arange(d, dtype=x.dtype) * size).reshape((d,) + (1,) * (x.ndim - 1))

        edges = dict(tree.edges)
        if "line" in edges:
            edges["line"] = {**edges["line"], "senders": off(edges["line"]["senders"], n_edge),
                             "receivers": off(edges["line"]["receivers"], n_edge)}
        tree = tree._replace(nodes={**tree.nodes, "graph": off(tree.nodes["graph"], n_graph)},
                             edges=edges, senders=off(tree.senders, n_node),
                             receivers=off(tree.receivers, n_node))
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def apply(fn: Callable, params: Any, batch: Any, *args: Any) -> Any:
    """``fn(params, sub_batch, *args)`` on every sub-batch (``args`` with a leading device
    axis too), outputs merged (:func:`merge`)."""
    return merge(jax.vmap(fn, in_axes=(None, 0) + (0,) * len(args))(params, batch, *args))


def loss_and_grads(model: Any, loss: Callable, params: Any, batch: Any, key: jax.Array):
    """``((loss, stats), grads)`` of the training-mode forward pass on a global batch: the
    loss of the merged batch (its masked means over every device's graphs); sub-batch
    ``d`` gets the key ``split(key, D)[d]``."""
    keys = jax.random.split(key, n_devices(batch))
    return jax.value_and_grad(
        lambda p: loss(apply(model.train_apply, p, batch, keys), merge(batch)),
        has_aux=True)(params)


# --------------------------------------------------------------------------- loaders
def blank(batch: Any) -> Any:
    """A copy of ``batch`` with every mask (``mask``, ``<name>_mask``) False: a sub-batch of
    padding for a device without data in the last step (it adds nothing to loss or gradients)."""
    def f(path, x):
        name = getattr(path[-1], "key", None) if path else None
        is_mask = isinstance(name, str) and (name == "mask" or name.endswith("_mask"))
        return np.zeros_like(x) if is_mask else x

    return jax.tree_util.tree_map_with_path(f, batch)


def stack(items: list, devices: int) -> Any:
    """``items`` (at most ``devices`` sub-batches) stacked on a device axis, filled up with
    :func:`blank` copies of the first."""
    items = items + [blank(items[0])] * (devices - len(items))
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *items)


def device_budget(records: Sequence[graph.Record], batch_size: int, devices: int,
                  layout: str = "sparse") -> graph.Budget:
    """The per-device budget for a global batch of ``batch_size`` graphs: that of
    ``batch_size / devices`` graphs (ValueError when it does not divide)."""
    if batch_size % devices:
        raise ValueError(f"batch_size {batch_size} does not divide over {devices} devices; "
                         f"use a multiple of {devices}")
    per = batch_size // devices
    if layout == "dense":
        return graph.dense_budget(records, per)
    return graph.estimate_budget(records, per)


class Shards:
    """Global batches of a single model's data for ``devices`` devices: ``epoch(k)`` yields
    consecutive per-device batches of ``data`` stacked ``devices`` at a time (the last step
    filled with :func:`blank` sub-batches).

    A :class:`graph.GraphLoader` is rebuilt for ``batch_size / devices`` graphs per device
    (its records, layout, seed and shuffle kept; its budget re-estimated, so a global batch
    holds the graphs a one-device batch would when batches are cut by graph count); any
    other loader or list of batches is taken as per-device batches."""

    def __init__(self, data: Any, devices: int):
        if isinstance(data, graph.GraphLoader):
            budget = device_budget(data.records, data.batch_size, devices, data.layout)
            data = graph.GraphLoader(data.records, data.batch_size // devices, budget,
                                     data.shuffle, data.seed, data.layout)
        self.data, self.devices = data, devices

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.devices)

    def epoch(self, epoch: int = 0) -> Iterator[Any]:
        items = self.data.epoch(epoch) if hasattr(self.data, "epoch") else self.data
        buf: list = []
        for b in items:
            buf.append(b)
            if len(buf) == self.devices:
                yield stack(buf, self.devices)
                buf = []
        if buf:
            yield stack(buf, self.devices)

    def __iter__(self) -> Iterator[Any]:
        return self.epoch(0)


class CommitteeShards:
    """A :class:`jaxmat.core.ensemble.CommitteeLoader` for ``devices`` devices: ``epoch(k)``
    yields ``(batches (members, devices, ...), active (members,))``, each member's global
    batch made of its next ``devices`` groups. A loader of records is rebuilt for
    ``batch_size / devices`` graphs per device (same members, resamples and orders); a
    loader of fixed batches takes each batch as one device's part."""

    def __init__(self, loader: Any, devices: int):
        if loader.records is not None:
            budget = device_budget(loader.records, loader.batch_size, devices, loader.layout)
            layout = loader.layout
            loader = type(loader)(loader.records, loader.n_members, loader.batch_size // devices,
                                  budget, loader.seed, loader.bootstrap, loader.shuffle)
            loader.layout = layout
        self.loader, self.devices, self.n_members = loader, devices, loader.n_members

    def _steps(self, epoch: int) -> tuple[list, list[int]]:
        per, _ = self.loader.groups(epoch)
        return per, [math.ceil(len(g) / self.devices) for g in per]

    def __len__(self) -> int:
        return max(self._steps(0)[1])

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Any, np.ndarray]]:
        per, steps = self._steps(epoch)
        d = self.devices
        for s in range(max(steps)):
            items = []
            for groups, n in zip(per, steps):
                t = min(s, n - 1)
                items.append(stack([self.loader.batch_of(g) for g in groups[t * d:(t + 1) * d]], d))
            yield stack(items, len(items)), np.array([s < n for n in steps])

    def __iter__(self) -> Iterator[tuple[Any, np.ndarray]]:
        return self.epoch(0)
