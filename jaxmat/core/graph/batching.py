"""Records -> one padded batch (:data:`Batch`) in the sparse or dense layout."""
from __future__ import annotations

from collections.abc import Sequence

import jraph
import numpy as np

from jaxmat.core.graph.budget import (LAYOUTS, PAD_NODES, Budget, _check_dense, choose_layout,
                                      dense_shape, fixed_budget)
from jaxmat.core.graph.neighborlist import check_symmetric
from jaxmat.core.graph.records import Record
from jaxmat.core.graph.structure import PAD_DISTANCE

Batch = jraph.GraphsTuple


def batch(records: Sequence[Record], budget: Budget | None = None, dtype=np.float32,
          layout: str = "sparse", partial: tuple[dict, dict] = ({}, {})) -> Batch:
    """Concatenate records into one padded :data:`Batch` (numpy leaves).

    Without a budget, a sparse batch is padded by one node, one graph and no extra
    edges; a dense one has one graph per record and ``n_max`` = the largest record.
    Targets present on only some records are zero-filled with a ``<name>_mask``; so are the
    names in ``partial`` (:func:`partial_targets` of a whole dataset) when no record has them.
    ``layout`` is ``"sparse"``, ``"dense"`` or ``"auto"`` (see the module docstring; here
    ``"auto"`` is always sparse: :class:`GraphLoader` with ``model=`` can choose dense).
    Records with line graphs give ``edges["line"]`` (all records must have one).
    """
    if not records:
        raise ValueError("cannot batch an empty list of structures")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    if layout == "auto":
        layout = choose_layout(records)
    with_line = [r.line_senders is not None for r in records]
    if any(with_line) and not all(with_line):
        raise ValueError("cannot batch records with and without line graphs together")
    if layout == "dense":
        if any(with_line):
            raise ValueError("line graphs need layout='sparse'")
        return _batch_dense(records, budget, dtype, partial)
    return _batch_sparse(records, budget, dtype, partial)



def _batch_sparse(records: Sequence[Record], budget: Budget | None, dtype,
                  partial: tuple[dict, dict]) -> Batch:
    """The sparse layout (module docstring): concatenated edge lists, one padding graph."""
    for k, r in enumerate(records):
        check_symmetric(r, f"record {k}")
    n_real_nodes = sum(r.n_node for r in records)
    n_real_edges = sum(r.n_edge for r in records)
    n_real_trip = sum(r.n_triplet for r in records)
    if budget is None:
        budget = Budget(n_real_nodes + PAD_NODES, n_real_edges, len(records) + 1, n_real_trip)
    if not budget.fits(n_real_nodes, n_real_edges, len(records), n_real_trip):
        raise ValueError(
            f"{len(records)} structures ({n_real_nodes} atoms, {n_real_edges} edges, "
            f"{n_real_trip} triplets) do not fit the budget {budget}"
        )
    N, E, G = budget.n_node, budget.n_edge, budget.n_graph
    g = len(records)
    n_node = np.zeros(G, np.int32)
    n_edge = np.zeros(G, np.int32)
    n_node[:g] = [r.n_node for r in records]
    n_edge[:g] = [r.n_edge for r in records]
    n_node[-1] = N - n_real_nodes
    n_edge[-1] = E - n_real_edges
    offsets = np.concatenate([[0], np.cumsum(n_node[:g])])[:-1]

    positions = np.zeros((N, 3), dtype)
    positions[:n_real_nodes] = np.concatenate([r.positions for r in records])
    species = np.zeros(N, np.int32)
    species[:n_real_nodes] = np.concatenate([r.numbers for r in records])
    node_graph = np.repeat(np.arange(G, dtype=np.int32), n_node)
    positions[n_real_nodes:] = pad_positions(N - n_real_nodes)
    senders = np.full(E, N - 1, np.int32)   # padding edges join the last two padding nodes
    receivers = np.full(E, N - 2, np.int32)
    senders[:n_real_edges] = np.concatenate([r.senders + o for r, o in zip(records, offsets)])
    receivers[:n_real_edges] = np.concatenate([r.receivers + o for r, o in zip(records, offsets)])
    shifts = np.zeros((E, 3), dtype)
    shifts[:n_real_edges] = np.concatenate([r.shifts for r in records])
    shifts[n_real_edges:, 0] = 1.0  # padding edges: 2 PAD_DISTANCE long (module docstring)
    cell = np.zeros((G, 3, 3), dtype)
    cell[:g] = [r.cell for r in records]
    cell[g:] = PAD_DISTANCE * np.eye(3)
    pbc = np.zeros((G, 3), bool)
    pbc[:g] = [r.pbc for r in records]

    nodes = {
        "positions": positions,
        "species": species,
        "graph": node_graph,
        "mask": np.arange(N) < n_real_nodes,
    }
    edges = {"shifts": shifts, "mask": np.arange(E) < n_real_edges}
    if records[0].line_senders is not None:
        edges["line"] = _line_edges(records, n_edge[:g], E, budget.n_triplet)
    globals_ = {
        "cell": cell,
        "pbc": pbc,
        "n_atoms": n_node.astype(dtype) * (np.arange(G) < g),
        "mask": np.arange(G) < g,
    }
    _fill_targets(records, nodes, globals_, offsets, G, dtype, partial)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, senders=senders, receivers=receivers,
        globals=globals_, n_node=n_node, n_edge=n_edge,
    )


def pad_positions(n: int) -> np.ndarray:
    """Positions (n, 3) Å of ``n`` padding nodes: ``PAD_DISTANCE`` apart on the x axis, so an
    edge between two of them is never shorter than ``PAD_DISTANCE``, with or without the
    cell shift."""
    out = np.zeros((n, 3))
    out[:, 0] = PAD_DISTANCE * np.arange(1, n + 1)
    return out


def _line_edges(records: Sequence[Record], n_edge: np.ndarray, E: int, T: int) -> dict:
    """Bond-graph triplets of a sparse batch; padding triplets join the last edge to itself."""
    n_real = sum(r.n_triplet for r in records)
    e_off = np.concatenate([[0], np.cumsum(n_edge)])[:-1]
    l_send = np.full(T, E - 1, np.int32)
    l_recv = np.full(T, E - 1, np.int32)
    if n_real:
        l_send[:n_real] = np.concatenate([r.line_senders + o for r, o in zip(records, e_off)])
        l_recv[:n_real] = np.concatenate([r.line_receivers + o for r, o in zip(records, e_off)])
    return {"senders": l_send, "receivers": l_recv, "mask": np.arange(T) < n_real}


def _fill_targets(records: Sequence[Record], nodes: dict, globals_: dict,
                  offsets: Sequence[int], G: int, dtype, partial: tuple[dict, dict]) -> None:
    """Add graph targets (``globals``) and node targets (``nodes``), zero where a record has
    none, with a ``<name>_mask`` where some entry lacks it or the name is in ``partial``
    (:func:`partial_targets` of the dataset: every batch then has the same keys)."""
    spans = {"targets": [(a, a + 1) for a in range(len(records))],
             "node_targets": [(o, o + r.n_node) for r, o in zip(records, offsets)]}
    for attr, store, part in (("targets", globals_, partial[0]),
                              ("node_targets", nodes, partial[1])):
        real = np.asarray(store["mask"])
        for key in sorted({k for r in records for k in getattr(r, attr)} | set(part)):
            values = [getattr(r, attr).get(key) for r in records]
            shape = part[key] if key in part else next(
                np.shape(v)[attr == "node_targets":] for v in values if v is not None)
            arr, have = np.zeros((len(real), *shape), dtype), np.zeros(len(real), bool)
            for v, (lo, hi) in zip(values, spans[attr]):
                if v is not None:
                    arr[lo:hi], have[lo:hi] = np.reshape(v, (hi - lo, *shape)), True
            store[key] = arr
            if key in part or not have[real].all():
                store[f"{key}_mask"] = have


def _batch_dense(records: Sequence[Record], budget: Budget | None, dtype,
                 partial: tuple[dict, dict]) -> Batch:
    """The dense layout (module docstring): per-graph atom blocks and pair slots."""
    _check_dense(records)
    G, n, K = dense_shape(budget or fixed_budget(records, len(records), "dense"))
    g = len(records)
    if g > G or any(r.n_node > n for r in records):
        raise ValueError(
            f"{g} structures (largest {max(r.n_node for r in records)} atoms) do not fit "
            f"the dense budget of {G} graphs x {n} atom slots")
    N, E = G * n, G * n * K
    sizes = np.zeros(G, np.int32)
    sizes[:g] = [r.n_node for r in records]
    offsets = np.arange(g) * n
    positions = np.zeros((G, n, 3), dtype)
    positions[..., 0] = PAD_DISTANCE * np.arange(1, n + 1)  # padding slots, far apart
    species = np.zeros((G, n), np.int32)
    adj = np.zeros((G, n, n), bool)  # adj[g, i, j]: j is a neighbour of i
    for a, r in enumerate(records):
        positions[a, :r.n_node] = r.positions
        species[a, :r.n_node] = r.numbers
        adj[a, r.receivers, r.senders] = True
    node_mask = np.arange(n)[None, :] < sizes[:, None]
    i = np.arange(n)[:, None]
    k = np.arange(1, K + 1)[None, :]
    j = (i + k) % n  # (n, K) sender slot of pair slot (i, k)
    unique = ~((2 * k == n) & (i >= n // 2))
    edge_mask = adj[:, i, j] & unique[None]
    base = (np.arange(G) * n)[:, None, None]
    receivers = np.broadcast_to(base + i[None], (G, n, K)).reshape(E).astype(np.int32)
    senders = np.broadcast_to(base + j[None], (G, n, K)).reshape(E).astype(np.int32)
    cell = np.zeros((G, 3, 3), dtype)
    nodes = {
        "positions": positions.reshape(N, 3),
        "species": species.reshape(N),
        "graph": np.repeat(np.arange(G, dtype=np.int32), n),
        "mask": node_mask.reshape(N),
    }
    edges = {"shifts": np.zeros((E, 3), dtype), "mask": edge_mask.reshape(E)}
    globals_ = {
        "cell": cell,
        "pbc": np.zeros((G, 3), bool),
        "n_atoms": sizes.astype(dtype),
        "mask": np.arange(G) < g,
        "dense": np.full(G, n, np.int32),
    }
    _fill_targets(records, nodes, globals_, offsets, G, dtype, partial)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, senders=senders, receivers=receivers, globals=globals_,
        n_node=np.full(G, n, np.int32), n_edge=np.full(G, n * K, np.int32),
    )


def partial_targets(records: Sequence[Record]) -> tuple[dict, dict]:
    """Graph and node target names (with per-entry shapes) that only some records have."""
    out: tuple[dict, dict] = ({}, {})
    for attr, found in zip(("targets", "node_targets"), out):
        for key in sorted({k for r in records for k in getattr(r, attr)}):
            have = [getattr(r, attr)[key] for r in records if key in getattr(r, attr)]
            if len(have) < len(records):
                found[key] = np.shape(have[0])[attr == "node_targets":]
    return out
