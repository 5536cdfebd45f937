"""Choosing which candidate geometries to label: committee force variance above a
percentile of the training set's, near-duplicates dropped by RMSD after optimal
alignment (Kabsch rotation, optional permutation of like atoms), a cap per generation.

The score is ``forces_var_graph`` (:mod:`jaxmat.core.committee`): the committee force variance
averaged over atoms and xyz (eV²/Å²), the quantity in the adversarial objective
(:mod:`jaxmat.workflows.adversarial.attack`); σ = sqrt of it (eV/Å).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core import graph
from jaxmat.workflows.adversarial.attack import as_structure
from jaxmat.core.predict import predict
from jaxmat.core.protocol import Model, Params, resolve_spec


# --------------------------------------------------------------------------- committee statistics
def committee_predict(model: Model, params: Params, structures: Sequence[Any],
                      cutoff: float | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Committee predictions per structure (Atoms or Records), in input order, from
    :func:`jaxmat.core.predict.predict`: ``energy`` (eV, member mean), ``energy_var`` (eV²),
    ``forces`` (list of (n, 3) eV/Å), ``forces_var``, ``forces_var_atom`` and
    ``forces_var_graph`` (eV²/Å², :mod:`jaxmat.core.committee`). The graph comes from
    ``model.graph``; ``cutoff`` (Å) only for a model without one (ValueError if it
    disagrees with the model's).
    """
    recs = graph.records(structures, resolve_spec(model, cutoff), labels=False)
    out = predict(model, params, recs, batch_size=batch_size, keys=("energy", "forces"))
    if "forces_var_graph" not in out:
        raise ValueError("committee_predict needs committee params (a leading member axis)")
    return out


def too_close(structures: Sequence[Any], min_distance: float) -> np.ndarray:
    """(N,) bool: structures with two atoms (periodic images included) closer than
    ``min_distance`` Å, or with non-finite positions. Attacks and MD can squeeze atoms
    together; such geometries are unphysical and are not sent to the oracle."""
    out = np.zeros(len(structures), dtype=bool)
    for k, s in enumerate(structures):
        raw = np.asarray(getattr(s, "positions", np.zeros((0, 3))), dtype=np.float64)
        if not np.isfinite(raw).all():
            out[k] = True
            continue
        _, pos, cell, pbc = as_structure(s, f"structure {k}")  # other bad input raises
        d = graph.neighbor_list(pos, cell, pbc, min_distance)[3]
        out[k] = bool(len(d) and d.min() < min_distance)
    return out


def variance_threshold(train_forces_var_graph: Any, percentile: float) -> float:
    """The ``percentile`` (0–100) of the training set's ``forces_var_graph`` (eV²/Å²)."""
    v = np.asarray(train_forces_var_graph, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("empty training-set force variances")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    return float(np.percentile(v, percentile))


# --------------------------------------------------------------------------- RMSD
def _kabsch_batch(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """RMSD (Å) after optimal rotation of centred ``q`` (B, n, 3) onto centred ``p`` (B, n, 3)."""
    h = np.einsum("bni,bnj->bij", q, p)
    u, s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
    s[:, -1] *= d
    msd = (np.sum(p * p, axis=(1, 2)) + np.sum(q * q, axis=(1, 2)) - 2.0 * s.sum(1)) / p.shape[1]
    return np.sqrt(np.maximum(msd, 0.0))


def _permutations(numbers: np.ndarray, limit: int = 5040) -> np.ndarray | None:
    """All index permutations that only exchange like atoms, or None if more than ``limit``."""
    groups = [np.flatnonzero(numbers == z) for z in np.unique(numbers)]
    count = math.prod(math.factorial(len(g)) for g in groups)
    if count > limit:
        return None
    perms = []
    for combo in itertools.product(*[itertools.permutations(g) for g in groups]):
        p = np.arange(len(numbers))
        for g, pg in zip(groups, combo):
            p[g] = pg
        perms.append(p)
    return np.array(perms)


def _check_species(za: np.ndarray, zb: np.ndarray, permute: bool) -> None:
    if len(za) != len(zb) or not np.array_equal(np.sort(za), np.sort(zb)):
        raise ValueError(f"mismatched species: {sorted(za.tolist())} vs {sorted(zb.tolist())}")
    if not permute and not np.array_equal(za, zb):
        raise ValueError("mismatched species order; pass permute=True to match like atoms")


def rmsd(a: Any, b: Any, permute: bool = False, align: bool = True) -> float:
    """RMSD (Å) between two structures (Atoms or Records) after optimal alignment.

    Molecules: centred, rotated by Kabsch (proper rotations), and with ``permute`` the
    best exchange of like atoms (exhaustive for small groups, else alternating Hungarian
    assignment and Kabsch). Periodic structures: minimum-image differences with the mean
    shift removed, no rotation (``permute`` matches like atoms by Hungarian assignment).
    ``align=False`` compares coordinates as given (no centring, rotation or permutation),
    for model systems whose coordinates are absolute (e.g. a 1-D double well).
    """
    za, pa, cell, pbc = as_structure(a, "first structure")
    zb, pb, _, _ = as_structure(b, "second structure")
    _check_species(za, zb, permute and align)
    if not align:
        return float(np.sqrt(np.mean(np.sum((pa - pb) ** 2, axis=1))))
    if pbc.any():
        return _periodic_rmsd(za, pa, zb, pb, cell, pbc, permute)
    return float(_rmsd_many(za, pa, zb, pb[None], permute)[0])


def _sorted_by_species(z: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.argsort(z, kind="stable")
    return z[o], p[..., o, :]


def _rmsd_many(za: np.ndarray, pa: np.ndarray, zb: np.ndarray, pbs: np.ndarray,
               permute: bool) -> np.ndarray:
    """RMSD of one molecule ``pa`` to many molecules ``pbs`` (B, n, 3) with the same species."""
    if permute:
        za, pa = _sorted_by_species(za, pa)
        zb, pbs = _sorted_by_species(zb, pbs)
    p = pa - pa.mean(0)
    q = pbs - pbs.mean(1, keepdims=True)
    if not permute:
        return _kabsch_batch(np.broadcast_to(p, q.shape), q)
    perms = _permutations(za)
    if perms is not None:
        qp = q[:, perms]  # (B, P, n, 3)
        B, P = qp.shape[:2]
        r = _kabsch_batch(np.broadcast_to(p, (B * P,) + p.shape), qp.reshape(B * P, *p.shape[-2:]))
        return r.reshape(B, P).min(1)
    return np.array([_hungarian_kabsch(za, p, qq) for qq in q])


def _rotate_onto(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(q.T @ p)
    d = np.sign(np.linalg.det(u @ vt))
    return q @ (u @ np.diag([1.0, 1.0, d]) @ vt)


def _hungarian_kabsch(z: np.ndarray, p: np.ndarray, q: np.ndarray, iters: int = 10) -> float:
    """Heuristic permutation + rotation for many like atoms: start from the principal-axes
    alignments (four proper sign choices), then alternate Hungarian assignment of like atoms
    and Kabsch rotation; the best RMSD found (an upper bound of the optimum)."""
    from scipy.optimize import linear_sum_assignment

    def axes(x):
        w = np.asarray(z, float)[:, None]  # weight by atomic number to break ties
        _, v = np.linalg.eigh((x * w).T @ x)
        return v

    vp, vq = axes(p), axes(q)
    best = float(_kabsch_batch(p[None], q[None])[0])
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        r = vq @ np.diag(signs) @ vp.T
        if np.linalg.det(r) < 0:
            r = vq @ np.diag(signs) @ np.diag([1, 1, -1]) @ vp.T
        qr = q @ r
        prev = np.inf
        for _ in range(iters):
            perm = np.arange(len(z))
            for v in np.unique(z):
                g = np.flatnonzero(z == v)
                cost = np.sum((p[g][:, None] - qr[g][None]) ** 2, axis=-1)
                _, col = linear_sum_assignment(cost)
                perm[g] = g[col]
            qq = q[perm]
            val = float(_kabsch_batch(p[None], qq[None])[0])
            best = min(best, val)
            if val >= prev - 1e-12:
                break
            prev = val
            qr = _rotate_onto(p, qq)
            qr = qr[np.argsort(perm)]  # back to q's atom order for the next assignment
    return best


def _periodic_rmsd(za, pa, zb, pb, cell, pbc, permute) -> float:
    from ase.geometry import find_mic

    if permute:
        from scipy.optimize import linear_sum_assignment

        perm = np.arange(len(za))
        for v in np.unique(za):
            ga, gb = np.flatnonzero(za == v), np.flatnonzero(zb == v)
            d = find_mic((pb[gb][None] - pa[ga][:, None]).reshape(-1, 3), cell, pbc)[1]
            _, col = linear_sum_assignment(d.reshape(len(ga), len(gb)) ** 2)
            perm[ga] = gb[col]
        pb = pb[perm]
    d, _ = find_mic(pb - pa, cell, pbc)
    d = d - d.mean(0)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def deduplicate(structures: Sequence[Any], threshold: float, permute: bool = False,
                order: Sequence[int] | None = None, reference: Sequence[Any] = (),
                max_keep: int | None = None, align: bool = True) -> list[int]:
    """Greedy near-duplicate removal: walk ``order`` (default input order; pass indices
    sorted by score to keep the best) and keep a structure if its RMSD (Å, :func:`rmsd`)
    to every structure kept so far and to every ``reference`` structure exceeds
    ``threshold``. Structures of different composition (or, without ``permute``, different
    atom order) never count as duplicates. Stops after ``max_keep``. ``align=False``
    compares raw coordinates (see :func:`rmsd`). Returns kept indices in walk order."""
    if threshold < 0:
        raise ValueError(f"RMSD threshold must be >= 0 Å, got {threshold}")
    structs = [as_structure(s, f"structure {k}") for k, s in enumerate(structures)]
    refs = [as_structure(s, f"reference structure {k}") for k, s in enumerate(reference)]
    order = list(range(len(structs)) if order is None else order)
    pool: dict[tuple, dict[str, list]] = {}

    permute = permute and align

    def canon(z, p):
        if permute:
            o = np.argsort(z, kind="stable")
            return z[o], p[o]
        return z, p

    def add(z, p, cell, pbc):
        zc, pc = canon(z, p)
        entry = pool.setdefault((tuple(zc.tolist()), bool(pbc.any())),
                                {"z": zc, "p": [], "cell": [], "pbc": []})
        entry["p"].append(pc)
        entry["cell"].append(cell)
        entry["pbc"].append(pbc)

    for z, p, cell, pbc in refs:
        add(z, p, cell, pbc)
    kept: list[int] = []
    for k in order:
        if max_keep is not None and len(kept) >= max_keep:
            break
        z, p, cell, pbc = structs[k]
        zc, pc = canon(z, p)
        entry = pool.get((tuple(zc.tolist()), bool(pbc.any())))
        if entry is not None:
            if not align:
                ps = np.stack(entry["p"])
                dmin = float(np.sqrt(np.mean(np.sum((ps - pc) ** 2, axis=-1), axis=-1)).min())
            elif pbc.any():
                dmin = min(_periodic_rmsd(zc, pc, zc, po, cell, pbc, permute) for po in entry["p"])
            else:
                dmin = float(_rmsd_many(zc, pc, zc, np.stack(entry["p"]), permute).min())
            if dmin <= threshold:
                continue
        kept.append(int(k))
        add(z, p, cell, pbc)
    return kept


# --------------------------------------------------------------------------- selection
@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """``percentile`` of the training force variances a candidate must exceed; ``rmsd``
    (Å) dedup threshold; ``permute`` like atoms in the RMSD (``align=False``: raw
    coordinates, for model systems); ``max_per_generation`` cap;
    ``fill`` tops up to the cap when too few candidates pass: first with the best-scored
    remaining (non-duplicate) candidates below the threshold, then, while still short,
    with the best remaining candidates under an RMSD threshold halved up to four times
    (rmsd/2 … rmsd/16), so equal-budget comparisons label the same number per round."""

    percentile: float = 90.0
    rmsd: float = 0.05
    permute: bool = True
    max_per_generation: int = 20
    fill: bool = False
    align: bool = True


def select(candidates: Sequence[Any], forces_var_graph: Any, train_forces_var_graph: Any,
           config: SelectConfig | None = None, scores: Any = None,
           reference: Sequence[Any] = ()) -> list[int]:
    """Indices of the candidates to label, best score first.

    Candidates whose ``forces_var_graph`` (eV²/Å², NaN: never chosen) exceeds the
    training set's ``percentile`` are ranked by ``scores`` (default: the variance),
    deduplicated by RMSD among themselves and against ``reference`` structures, and capped
    at ``max_per_generation``.
    """
    cfg = config or SelectConfig()
    fv = np.asarray(forces_var_graph, dtype=np.float64).reshape(-1)
    if len(fv) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(fv)} force variances")
    sc = fv if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(sc) != len(fv):
        raise ValueError(f"{len(fv)} candidates but {len(sc)} scores")
    if cfg.max_per_generation < 0:
        raise ValueError("max_per_generation must be >= 0")
    if len(fv) == 0 or cfg.max_per_generation == 0:
        return []
    thr = variance_threshold(train_forces_var_graph, cfg.percentile)
    sc = np.where(np.isfinite(sc), sc, -np.inf)
    ranked = np.argsort(-sc, kind="stable")
    above = [int(k) for k in ranked if np.isfinite(fv[k]) and fv[k] > thr]
    kept = deduplicate(candidates, cfg.rmsd, cfg.permute, above, reference, cfg.max_per_generation,
                       cfg.align)
    if cfg.fill and len(kept) < cfg.max_per_generation:
        rest = [int(k) for k in ranked if int(k) not in set(above) and np.isfinite(fv[k])]
        for r, order in [(cfg.rmsd, rest)] + [(cfg.rmsd / 2 ** h, None) for h in range(1, 5)]:
            if len(kept) >= cfg.max_per_generation:
                break
            if order is None:  # relaxed dedup over every candidate not chosen yet
                order = [int(k) for k in ranked if int(k) not in set(kept) and np.isfinite(fv[k])]
            chosen = [candidates[k] for k in kept]
            kept += deduplicate(candidates, r, cfg.permute, order, list(reference) + chosen,
                                cfg.max_per_generation - len(kept), cfg.align)
    return kept
