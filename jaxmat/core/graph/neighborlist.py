"""Host neighbour lists (vesin): every pair within a cutoff, or the k nearest; edge keys
and the symmetry check of edge lists."""
from __future__ import annotations

from typing import Any

import numpy as np
import vesin


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff`` (Å), including periodic images (vesin, O(N)).

    Returns ``(i, j, shifts, d)``: receivers, senders, integer cell offsets (E, 3)
    and distances, such that ``R[j] - R[i] + shifts @ cell`` has length ``d``; sorted
    by ``i`` then ``j``. Works for any triclinic cell, mixed boundaries (slabs, wires),
    atoms outside the cell and cutoffs larger than the cell (many images).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    box = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if (len(positions) < 2 and not pbc.any()) or cutoff <= 0:
        return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3)), np.zeros(0))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True, sorted=True)
    i, j, shifts, d = nl.compute(positions, box, [bool(p) for p in pbc], quantities="ijSd")
    return (i.astype(np.int32), j.astype(np.int32), shifts.astype(np.float64),
            d.astype(np.float64))


def knn_neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, k: int,
    symmetric: bool = True, tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every atom within ``cutoff`` (Å), periodic images included.

    Neighbours tied with the k-th distance (within ``tol`` Å) are all kept, so the graph does
    not depend on the atom order. With ``symmetric`` the result is made undirected: a pair
    kept in one direction is kept in both. Atoms with fewer than ``k`` neighbours inside the
    cutoff keep all of them. Same return convention as :func:`neighbor_list`.
    """
    if k < 1:
        raise ValueError(f"max_neighbors must be >= 1, got {k}")
    i, j, shifts, d = neighbor_list(positions, cell, pbc, cutoff)
    n = len(positions)
    if len(d) == 0:
        return i, j, shifts, d
    order = np.lexsort((d, i))  # by receiver, then distance
    i_s, d_s = i[order], d[order]
    start = np.searchsorted(i_s, np.arange(n))
    count = np.bincount(i_s, minlength=n)
    kth = np.full(n, np.inf)
    has = count > 0
    kth[has] = d_s[start[has] + np.minimum(count[has], k) - 1]
    keep = d <= kth[i] + tol
    if symmetric:
        fwd = _edge_keys(i, j, shifts, n)
        rev = _edge_keys(j, i, -shifts, n)
        kept = np.sort(fwd[keep])
        pos = np.clip(np.searchsorted(kept, rev), 0, len(kept) - 1)
        keep = keep | (kept[pos] == rev)
    return i[keep], j[keep], shifts[keep], d[keep]




def _edge_keys(receivers: np.ndarray, senders: np.ndarray, shifts: np.ndarray,
               n: int) -> np.ndarray:
    """One int64 per directed edge ``(i, j, shift)`` of an ``n``-atom structure."""
    s = np.rint(shifts).astype(np.int64)
    span = int(np.abs(s).max()) + 1 if len(s) else 1
    base = 2 * span + 1
    code = ((s[:, 0] + span) * base + (s[:, 1] + span)) * base + (s[:, 2] + span)
    return (receivers.astype(np.int64) * n + senders) * base**3 + code


def check_symmetric(record: Any, name: str = "structure") -> None:
    """ValueError unless every edge ``(i, j, s)`` has its reverse ``(j, i, -s)`` (true of
    every cutoff list; :func:`pair_list` relies on it)."""
    fwd = _edge_keys(record.receivers, record.senders, record.shifts, record.n_node)
    rev = _edge_keys(record.senders, record.receivers, -record.shifts, record.n_node)
    fwd_s, rev_s = np.sort(fwd), np.sort(rev)
    if not np.array_equal(fwd_s, rev_s):
        bad = np.flatnonzero(~np.isin(rev, fwd_s))
        e = int(bad[0]) if len(bad) else 0
        raise ValueError(
            f"{name}: the edge list is not symmetric: edge {e} ({int(record.receivers[e])} <- "
            f"{int(record.senders[e])}, shift {record.shifts[e].tolist()}) has no reverse edge")
