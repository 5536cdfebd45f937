"""The training composition hull: convex-hull membership, distance and room (linear
programmes), the alloying steps from one composition and where a reference sits
(:func:`boundary_report`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core.interpret.gradients import direction


BOUNDARY_MIN_INSIDE = 0.9  # chosen by benchmarks/photoanode_directions.py (validation libraries)


def in_convex_hull(points: Any, hull_points: Any, tol: float = 1e-9) -> np.ndarray:
    """Whether each row of ``points`` is a convex combination of rows of ``hull_points``
    (one linear programme each, scipy HiGHS)."""
    P = np.atleast_2d(np.asarray(points, np.float64))
    H = _hull_points(hull_points, P.shape[1])
    A = np.vstack([H.T, np.ones((1, len(H)))])
    fits = ((p, _lp(np.zeros(len(H)), A, p)) for p in P)
    return np.array([r.status == 0 and np.abs(A @ r.x - np.append(p, 1.0)).max() < 1e-6 + tol
                     for p, r in fits])


def _hull_points(hull_points: Any, n_el: int) -> np.ndarray:
    H = np.asarray(hull_points, np.float64)
    if H.ndim != 2 or H.shape[1] != n_el or len(H) == 0:
        raise ValueError(f"hull points must be (n, {n_el}), got {H.shape}")
    return H


def _lp(c: np.ndarray, A: np.ndarray, p: np.ndarray, bounds: Any = (0, None)) -> Any:
    """min c·z subject to A z = (p, 1) and ``bounds`` on z (scipy HiGHS)."""
    from scipy.optimize import linprog

    return linprog(c, A_eq=A, b_eq=np.append(p, 1.0), bounds=bounds, method="highs")


def hull_distance(point: Any, hull_points: Any) -> float:
    """L1 distance (same units as the fractions) from ``point`` to the convex hull of
    ``hull_points``: min ‖point − Hᵀλ‖₁ over λ ≥ 0, Σλ = 1 (a linear programme); 0 inside."""
    p = np.asarray(point, np.float64).ravel()
    H = _hull_points(hull_points, len(p))
    n, k = len(H), len(p)
    A = np.block([[H.T, np.eye(k), -np.eye(k)], [np.ones((1, n)), np.zeros((1, 2 * k))]])
    res = _lp(np.concatenate([np.zeros(n), np.ones(2 * k)]), A, p)
    if res.status != 0:
        raise ValueError(f"distance to the hull failed: {res.message}")
    return float(max(res.fun, 0.0))


def hull_room(point: Any, step_direction: Any, hull_points: Any, cap: float = 0.1) -> float:
    """How far (up to ``cap``, in units of the direction) ``point`` can move along
    ``step_direction`` and stay in the convex hull of ``hull_points`` (a linear programme;
    0 when the point itself is outside or sits on a facet the direction leaves through)."""
    p = np.asarray(point, np.float64).ravel()
    d = np.asarray(step_direction, np.float64).ravel()
    H = _hull_points(hull_points, len(p))
    n = len(H)
    A = np.vstack([np.hstack([H.T, -d[:, None]]), np.append(np.ones(n), 0.0)[None]])
    res = _lp(np.append(np.zeros(n), -1.0), A, p, [(0, None)] * n + [(0, cap)])
    return float(res.x[-1]) if res.status == 0 else 0.0


def alloying_steps(composition: Any, elements: Sequence[str], step: float = 0.01,
                   hosts: Sequence[str] | None = None) -> list[tuple[str, str, np.ndarray]]:
    """Every step of ``step`` from one ``composition`` (n_el,): add X at the expense of host h
    (every ordered pair with ``x_h ≥ step``; ``hosts`` limits h) or of all others
    (``"others"``). Each: (added element, host or ``"others"``, unit direction (n_el,))."""
    xs = np.asarray(composition, np.float64).ravel()
    if len(xs) != len(elements):
        raise ValueError(f"{len(elements)} element names for {len(xs)} composition columns")
    unknown = [h for h in (hosts or []) if h not in elements]
    if unknown:
        raise ValueError(f"unknown host element(s) {unknown}; elements are {list(elements)}")
    host_idx = range(len(elements)) if hosts is None else [list(elements).index(h) for h in hosts]
    # per added element a: every host with enough of it, then "others" (None) unless a is pure
    return [(elements[a], "others" if h is None else elements[h],
             np.asarray(direction(xs, a, h), np.float64)) for a in range(len(elements))
            for h in [h for h in host_idx if h != a and xs[h] >= step - 1e-12]
            + ([None] if xs[a] < 1.0 else [])]


@dataclasses.dataclass
class Boundary:
    """Where a reference composition sits in the training hull (:func:`boundary_report`).

    ``inside``: the reference itself is in the hull; ``distance``: its L1 distance to the
    hull (at.%, 0 inside); ``depth``: how far (at.%) it can move along its most constrained
    alloying direction before leaving (0 on a hull facet); ``room``: that length per step
    (``(add, remove) -> at.%``, capped); ``n_inside`` of ``n_steps`` steps of ``step`` stay
    inside; ``warning``: a sentence when fewer than ``min_inside`` of them do, else None."""

    sample: str
    inside: bool
    distance: float
    depth: float
    room: dict
    n_steps: int
    n_inside: int
    step: float
    min_inside: float

    @property
    def fraction_inside(self) -> float:
        return self.n_inside / max(self.n_steps, 1)

    @property
    def warning(self) -> str | None:
        if self.fraction_inside >= self.min_inside:
            return None
        where = ("outside the training compositions (L1 distance "
                 f"{self.distance:.2f} at.%)" if not self.inside else
                 "on the boundary of the training compositions")
        return (f"WARNING: {self.sample or 'the reference'} sits {where}: only {self.n_inside} of "
                f"{self.n_steps} steps of {100 * self.step:g} at.% stay inside (fewer than "
                f"{self.min_inside:.0%}). The model has seen no sample beyond it, so the ranking "
                f"of the other steps is extrapolation and can have the wrong sign; take a more "
                f"interior reference or measure around this one first.")

    def summary(self) -> str:
        line = (f"reference {self.sample or ''}: {'inside' if self.inside else 'OUTSIDE'} the "
                f"training hull, distance {self.distance:.2f} at.%, depth {self.depth:.2f} at.% "
                f"along its most constrained step; {self.n_inside} of {self.n_steps} steps of "
                f"{100 * self.step:g} at.% stay inside")
        return line + ("\n" + self.warning if self.warning else "")


def boundary_report(composition: Any, hull: Any, elements: Sequence[str], step: float = 0.01,
                    hosts: Sequence[str] | None = None, min_inside: float | None = None,
                    sample: str = "", cap: float = 0.1) -> Boundary:
    """:class:`Boundary` of one reference ``composition`` (n_el,) against ``hull`` (the
    training compositions (n, n_el)): its distance to the hull, the room along every step of
    :func:`alloying_steps` (up to ``cap``) and how many steps of ``step`` stay inside. The
    warning fires when the fraction inside is below ``min_inside`` (default
    :data:`BOUNDARY_MIN_INSIDE`, chosen by ``benchmarks/photoanode_directions.py`` as the
    fraction that best tells references on a facet of the hull from interior ones on
    simulated validation libraries)."""
    xs = np.asarray(composition, np.float64).ravel()
    H = _hull_points(hull, len(xs))
    steps = alloying_steps(xs, elements, step, hosts)
    if not steps:
        raise ValueError("no alloying step from this composition (no host has >= step)")
    inside_steps = in_convex_hull(np.stack([xs + step * d for _, _, d in steps]), H)
    dist = hull_distance(xs, H)
    inside = bool(dist < 1e-7)
    room = {(a, h): (max(100 * hull_room(xs, d, H, cap), 0.0) if inside else 0.0) for a, h, d in steps}
    return Boundary(sample, inside, 100 * dist, max(min(room.values()), 0.0) + 0.0, room, len(steps),
                    int(inside_steps.sum()), step,
                    BOUNDARY_MIN_INSIDE if min_inside is None else float(min_inside))
