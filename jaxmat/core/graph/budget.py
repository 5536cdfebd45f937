"""Padding budgets (fixed batch shapes), layout choice and packing of records into batches."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jaxmat.core.graph.records import Record

PAD_NODES = 2  # padding nodes of a sparse batch (distinct and far apart: no zero-length edge)


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(max(x, 1) / multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Fixed batch shape: total nodes, edges and graphs (including the padding graph), and
    line-graph triplets (0 for batches without line graphs). A sparse batch keeps
    :data:`PAD_NODES` padding nodes, so padding edges can join two distinct ones."""

    n_node: int
    n_edge: int
    n_graph: int
    n_triplet: int = 0

    def fits(self, n_node: int, n_edge: int, n_graph: int, n_triplet: int = 0) -> bool:
        return (n_node + PAD_NODES <= self.n_node and n_edge <= self.n_edge and n_graph < self.n_graph
                and n_triplet <= self.n_triplet)


def estimate_budget(records: Sequence[Record], batch_size: int, multiple: int = 64) -> Budget:
    """Budget for ``batch_size`` graphs per batch, from the data's size statistics
    (:func:`fixed_budget` for ``min(batch_size, len(records))`` graphs)."""
    if not records:
        raise ValueError("cannot estimate a padding budget from an empty dataset")
    return fixed_budget(records, min(batch_size, len(records)), multiple=multiple)


def fixed_budget(records: Sequence[Record], batch_size: int, layout: str = "sparse",
                 multiple: int = 64, edge_margin: float = 1.0) -> Budget:
    """A budget for ``batch_size`` graphs per batch that does not depend on how many
    records there are (only on their sizes), so calls on more or fewer structures of the
    same kind reuse one compiled program; every single record fits.

    Sparse: ``batch_size + 1`` graphs; nodes, edges (times ``edge_margin``, head-room for
    neighbour lists that grow) and line-graph triplets are the mean per record times
    ``batch_size`` plus the largest record (for ``batch_size`` 1: the largest record),
    rounded up to ``multiple``. Dense: ``batch_size`` graphs of ``n_max`` atom slots (the
    largest record).
    """
    if not records:
        raise ValueError("cannot estimate a padding budget from an empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if layout == "dense":
        _check_dense(records)
        n_max = max(r.n_node for r in records)
        return Budget(batch_size * n_max, batch_size * n_max * (n_max // 2), batch_size)
    if layout != "sparse":
        raise ValueError(f"fixed_budget needs layout 'sparse' or 'dense', got {layout!r}")

    def size(counts, margin=1.0, extra=0):
        c = np.asarray(counts, dtype=float)
        if batch_size == 1:  # one record per batch: no room needed for packing
            return _round_up(margin * c.max() + extra, multiple)
        return _round_up(margin * batch_size * c.mean() + c.max() + extra, multiple)

    n_triplet = 0
    if any(r.line_senders is not None for r in records):
        n_triplet = size([r.n_triplet for r in records])
    return Budget(size([r.n_node for r in records], extra=PAD_NODES),
                  size([r.n_edge for r in records], edge_margin), batch_size + 1, n_triplet)


LAYOUTS = ("sparse", "dense", "auto")


def dense_budget(records: Sequence[Record], batch_size: int) -> Budget:
    """Budget of the dense layout: ``batch_size`` graphs of ``n_max`` atom slots
    (the largest structure) and ``n_max // 2`` pair slots per atom."""
    return fixed_budget(records, max(1, min(batch_size, len(records))), "dense")


def _check_dense(records: Sequence[Record]) -> None:
    for k, r in enumerate(records):
        if np.any(r.pbc):
            raise ValueError(
                f"record {k}: the dense layout is for non-periodic molecules; "
                "periodic structures need layout='sparse'")


def dense_shape(budget: Budget) -> tuple[int, int, int]:
    """``(n_graph, n_max, K)`` of a dense budget; ValueError if it is not one."""
    g = budget.n_graph
    n_max = budget.n_node // g if g else 0
    if g < 1 or n_max * g != budget.n_node or budget.n_edge != g * n_max * (n_max // 2):
        raise ValueError(f"{budget} is not a dense budget (n_graph * n_max atom slots, "
                         "n_graph * n_max * (n_max // 2) pair slots)")
    return g, n_max, n_max // 2


def resolve_layout(records: Sequence[Record], layout: str, batch_size: int,
                   layouts: Sequence[str] = ("sparse",), name: str = "model") -> str:
    """The layout of a model's batches: ``layout`` when the model declares it (``layouts``,
    its ``graph.layouts``), or for ``"auto"`` :func:`choose_layout` among them. Every
    batcher (loaders, ``predict``, committees) decides here."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    if layout == "auto":
        return choose_layout(records, batch_size, layouts)
    if layout not in layouts:
        raise ValueError(f"{name} supports the batch layouts {list(layouts)}, not {layout!r}")
    return layout


def choose_layout(records: Sequence[Record], batch_size: int = 32,
                  layouts: Sequence[str] = ("sparse",)) -> str:
    """Among the model's ``layouts`` (its ``model.graph.layouts``; default sparse only):
    ``"dense"`` when allowed, every structure is a non-periodic molecule and the dense pair
    slots cost at most 1.5x the neighbour list's unordered pairs, else ``"sparse"``."""
    if "dense" not in layouts or not records or any(np.any(r.pbc) for r in records):
        if "sparse" not in layouts:
            raise ValueError(f"no layout of {list(layouts)} fits these structures "
                             "(the dense layout is for non-periodic molecules)")
        return "sparse"
    n_max = max(r.n_node for r in records)
    pairs = sum(r.n_edge for r in records) / 2
    return "dense" if len(records) * n_max * (n_max // 2) <= 1.5 * max(pairs, 1) else "sparse"


def pack(records: Sequence[Record], budget: Budget, order: Sequence[int] | None = None,
         layout: str = "sparse") -> list[list[int]]:
    """Group record indices (in ``order``) into batches that fit ``budget``: greedily
    by atoms/edges (sparse) or ``n_graph`` at a time (dense)."""
    order = range(len(records)) if order is None else order
    if layout == "dense":
        g, n_max, _ = dense_shape(budget)
        order = list(order)
        for k in order:
            if records[k].n_node > n_max:
                raise ValueError(f"record {k} ({records[k].n_node} atoms) exceeds the "
                                 f"dense budget's {n_max} atom slots")
        return [order[s:s + g] for s in range(0, len(order), g)]
    groups: list[list[int]] = []
    cur: list[int] = []
    nn = ne = nt = 0
    for k in order:
        r = records[k]
        if not budget.fits(r.n_node, r.n_edge, 1, r.n_triplet):
            raise ValueError(
                f"record {k} ({r.n_node} atoms, {r.n_edge} edges, {r.n_triplet} triplets) "
                f"exceeds the budget {budget}"
            )
        if not budget.fits(nn + r.n_node, ne + r.n_edge, len(cur) + 1, nt + r.n_triplet):
            groups.append(cur)
            cur, nn, ne, nt = [], 0, 0, 0
        cur.append(k)
        nn += r.n_node
        ne += r.n_edge
        nt += r.n_triplet
    if cur:
        groups.append(cur)
    return groups
