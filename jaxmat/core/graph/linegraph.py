"""Line graphs (bond graphs) of atom graphs, for models with bond angles (ALIGNN-style).

The line graph's nodes are the atom graph's (directed) edges; a line-graph edge (a
*triplet*) joins two bonds that share an atom, following the direction of messages:
``line_senders[t] = e1`` is a bond ``k -> j`` (sender ``k``, receiver ``j``) and
``line_receivers[t] = e2`` is a bond ``j -> i`` leaving the shared atom ``j``, so that
``receivers[e1] == senders[e2]``. Periodic images come for free from the edges' cell
shifts. The pair made of a bond and its own reverse (``k == i`` and the same image) is
left out unless ``backtracking=True``; its angle is always 0.

The bond angle θ at the shared atom ``j`` between ``j -> k`` and ``j -> i`` is computed
inside the model from the edge vectors (:func:`bond_cosines`), so gradients with respect
to positions and strain flow through it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core.graph import ops


def line_graph(
    senders: np.ndarray, receivers: np.ndarray, shifts: np.ndarray, n_node: int,
    backtracking: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Triplets of an atom graph (host-side): ``(line_senders, line_receivers)`` (T,) edge
    indices with ``receivers[line_senders] == senders[line_receivers]``."""
    senders = np.asarray(senders, np.int64)
    receivers = np.asarray(receivers, np.int64)
    if senders.shape != receivers.shape or senders.ndim != 1:
        raise ValueError(f"senders {senders.shape} and receivers {receivers.shape} must be "
                         "1-D arrays of the same length")
    E = len(senders)
    if E == 0:
        empty = np.zeros(0, np.int32)
        return empty, empty
    if max(senders.max(), receivers.max()) >= n_node or min(senders.min(), receivers.min()) < 0:
        raise ValueError(f"edge indices out of range for {n_node} atoms")
    out_order = np.argsort(senders, kind="stable")  # outgoing edges e2 grouped by atom
    n_out = np.bincount(senders, minlength=n_node)
    out_start = np.concatenate([[0], np.cumsum(n_out)[:-1]])
    reps = n_out[receivers]  # every e1 pairs with all edges leaving its receiver
    e1 = np.repeat(np.arange(E), reps)
    within = np.arange(len(e1)) - np.repeat(np.cumsum(reps) - reps, reps)
    e2 = out_order[out_start[receivers[e1]] + within]
    if not backtracking:
        s = np.rint(np.asarray(shifts)).astype(np.int64)
        back = (senders[e1] == receivers[e2]) & np.all(s[e1] == -s[e2], axis=1)
        e1, e2 = e1[~back], e2[~back]
    return e1.astype(np.int32), e2.astype(np.int32)


def add_line_graph(record: Any, backtracking: bool = False) -> Any:
    """Copy of ``record`` with its line graph (see :func:`line_graph`)."""
    ls, lr = line_graph(record.senders, record.receivers, record.shifts, record.n_node,
                        backtracking)
    return dataclasses.replace(record, line_senders=ls, line_receivers=lr)


def bond_cosines(batch: ops.Batch, vectors: jax.Array | None = None) -> jax.Array:
    """cos θ (T,) of every triplet: the angle at the shared atom between its two bonds.

    ``vectors`` are the edge vectors (Å, from :func:`jaxmat.core.graph.edge_vectors` if not
    given). Finite with finite gradients for zero-length (padding) bonds; 1 there.
    """
    line = batch.edges["line"]
    vec = ops.edge_vectors(batch) if vectors is None else vectors
    a = vec[line["senders"]]  # shared atom -> far end of the incoming bond
    b = -vec[line["receivers"]]  # shared atom -> receiver of the outgoing bond
    na = ops.safe_norm(a)
    nb = ops.safe_norm(b)
    denom = na * nb
    ok = denom > 0
    cos = jnp.sum(a * b, axis=-1) / jnp.where(ok, denom, 1.0)
    return jnp.where(ok, jnp.clip(cos, -1.0, 1.0), 1.0)


def records_from_atoms(atoms_list: Sequence[Any], cutoff: float = 8.0,
                       max_neighbors: int | None = 12) -> list:
    """Records with line graphs for the ALIGNN defaults: the 12 nearest neighbours (ties
    kept, undirected) within 8 Å (``max_neighbors=None``: the plain cutoff graph); the same
    as :func:`jaxmat.core.graph.records` with ``GraphSpec(cutoff, max_neighbors,
    line_graph=True)``."""
    from jaxmat.core.graph.records import records
    from jaxmat.core.protocol import GraphSpec

    return records(atoms_list, GraphSpec(cutoff, max_neighbors, line_graph=True))
