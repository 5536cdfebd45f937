"""Committee combiners that do not blur peaks.

The member mean keeps every peak at 1/M of its height where members disagree on its
position, so real peaks flatten and spurious ones survive at reduced height.  Here:

* ``"mean"``, ``"median"`` (pointwise over members);
* ``"aligned"``: the members' significant peaks (:func:`jaxmat.core.spectra.find_peaks`)
  are clustered across members (peaks of different members within ``tol`` eV, 1 eV, of the
  cluster's first peak); clusters holding at least ``quorum`` of the members are consensus
  peaks at the members' median energy.  Each member's energy axis is warped piecewise
  linearly so that its consensus peaks sit at the consensus energies, then the pointwise
  median over the aligned members is taken: a peak all members agree on stays sharp at its
  agreed position; a peak only a minority has is dropped by the median.
"""
from __future__ import annotations

import numpy as np

from jaxmat.core.spectra import PEAK_TOL_EV, SIGNIFICANT_PROMINENCE, find_peaks

COMBINERS = ("mean", "median", "aligned")


def consensus_peaks(grid: np.ndarray, members: np.ndarray, tol: float = PEAK_TOL_EV,
                    quorum: float = 0.5, prominence: float = SIGNIFICANT_PROMINENCE
                    ) -> list[dict[int, float]]:
    """Clusters of member peaks held by at least ``quorum`` (fraction) of the members:
    ``[{member: peak energy eV, ...}, ...]`` in order of energy."""
    members = np.asarray(members, np.float64)
    if members.ndim != 2 or members.shape[1] != len(grid):
        raise ValueError(f"members must be (M, {len(grid)}), got {members.shape}")
    peaks = sorted((float(e), m) for m, y in enumerate(members)
                   for e in find_peaks(grid, y, prominence)[0])
    clusters: list[dict[int, float]] = []
    for e, m in peaks:
        if clusters and m not in clusters[-1] and e - min(clusters[-1].values()) <= tol:
            clusters[-1][m] = e
        else:
            clusters.append({m: e})
    need = max(1, int(np.ceil(quorum * len(members) - 1e-9)))
    return [c for c in clusters if len(c) >= need]


def align(grid: np.ndarray, members: np.ndarray, tol: float = PEAK_TOL_EV, quorum: float = 0.5,
          prominence: float = SIGNIFICANT_PROMINENCE) -> np.ndarray:
    """Members (M, P) with their energy axes warped onto the consensus peak energies
    (piecewise linear, grid ends fixed); see the module docstring."""
    grid = np.asarray(grid, np.float64)
    members = np.asarray(members, np.float64)
    clusters = consensus_peaks(grid, members, tol, quorum, prominence)
    out = members.copy()
    for m in range(len(members)):
        src, dst = [grid[0]], [grid[0]]
        for c in clusters:
            if m in c:
                target = float(np.median(list(c.values())))
                if c[m] > src[-1] and target > dst[-1]:
                    src.append(c[m])
                    dst.append(target)
        if len(src) == 1:
            continue
        if grid[-1] > src[-1] and grid[-1] > dst[-1]:
            src.append(grid[-1])
            dst.append(grid[-1])
        # aligned(E) = member(w^-1(E)), w: src -> dst
        out[m] = np.interp(np.interp(grid, dst, src), grid, members[m])
    return out


def combine(members: np.ndarray, grid: np.ndarray, how: str = "mean", tol: float = PEAK_TOL_EV,
            quorum: float = 0.5) -> np.ndarray:
    """One spectrum (P,) from committee members (M, P) on ``grid`` (eV); ``how`` one of
    :data:`COMBINERS`."""
    members = np.asarray(members, np.float64)
    if members.ndim != 2:
        raise ValueError(f"members must be (M, P), got shape {members.shape}")
    if how == "mean":
        return members.mean(0)
    if how == "median":
        return np.median(members, axis=0)
    if how == "aligned":
        return np.median(align(grid, members, tol, quorum), axis=0)
    raise ValueError(f"unknown combiner {how!r}; choose from {COMBINERS}")


def combine_many(members: np.ndarray, grid: np.ndarray, how: str = "mean", **kw) -> np.ndarray:
    """:func:`combine` of every spectrum of ``members`` (M, S, P) -> (S, P)."""
    members = np.asarray(members)
    if members.ndim != 3:
        raise ValueError(f"members must be (M, S, P), got shape {members.shape}")
    if how in ("mean", "median"):
        return combine(members.reshape(len(members), -1), np.arange(members[0].size), how
                       ).reshape(members.shape[1:])
    return np.stack([combine(members[:, s], grid, how, **kw) for s in range(members.shape[1])])
