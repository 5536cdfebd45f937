"""Ranked alloying directions from one composition (:func:`suggest_directions`), by the
effect at fixed spectrum or the total effect, inside the training hull by default."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxmat.core.interpret.boundary import (Boundary, alloying_steps, boundary_report,
                                            in_convex_hull)
from jaxmat.core.interpret.confounding import gap_verdict, total_gradients
from jaxmat.core.interpret.gradients import get_leaf, input_gradients
from jaxmat.core.protocol import Model, Params


@dataclasses.dataclass
class Directions:
    """Ranked alloying steps: ``ranked`` (inside the training hull, or all of them when the
    hull was not applied) and ``outside`` (steps that leave it), each sorted by ``slope``
    (the ``rank_by`` effect: ``"total"``, the spectrum moving with composition, or
    ``"fixed"``, the spectrum held fixed). ``boundary``: the reference's
    :class:`Boundary`, when known. Indexing and iteration go through ``ranked``;
    :meth:`table` prints both."""

    ranked: list[dict]
    outside: list[dict]
    rank_by: str = "fixed"
    boundary: Boundary | None = None

    def __getitem__(self, k):
        return self.ranked[k]

    def __iter__(self):
        return iter(self.ranked)

    def __len__(self) -> int:
        return len(self.ranked)

    def table(self, top: int = 8, unit: str = "mW/cm²") -> str:
        """Plain-text table of the best ``top`` steps, then the best out-of-hull ones: the
        ranking effect, the other one, their gap, the flagged elements a step involves (``*``
        when its own gap is flagged by :func:`gap_verdict`) and whether it stays in the hull; the
        boundary report first, with its warning when the reference sits on the hull."""
        two = any("slope_total" in c for c in self.ranked + self.outside)
        first, o, other = (("total", "fixed", "at fixed spectrum") if self.rank_by == "total"
                           else ("fixed spectrum", "total", "total"))
        head = (f"{'add':>4} {'for':>7} {'ΔP ' + first + ' (' + unit + ')':>24}"
                + (f" {other:>17} {'gap':>7} {'flag':>6}" if two else "")
                + f" {'agree':>5} {'hull':>4}")

        def row(c):
            s = f"{c['add']:>4} {c['remove']:>7} {c['slope']:+15.3f} ± {c['std']:.3f}"
            if two:
                flag = ",".join(c["flagged"]) + ("*" if c["gap_flag"] else "")
                s += (f" {c['slope_' + o]:+9.3f} ± {c['std_' + o]:.3f} {c['gap']:+7.3f} "
                      f"{flag or '–':>6}")
            hull = {None: "?", True: "out", False: "in"}[c["outside_hull"]]
            return s + f" {c['agreement']:5.2f} {hull:>4}"

        lines = [self.boundary.summary()] if self.boundary is not None else []
        lines += [head, *map(row, self.ranked[:top])]
        if self.outside:
            lines += [f"outside the training hull ({len(self.outside)} steps, best first):",
                      *map(row, self.outside[:min(top, 3)])]
        return "\n".join(lines)


def suggest_directions(model: Model, params: Params, batch: dict, elements: Sequence[str],
                       wrt: str = "composition", output: str = "P", scale: float = 1.0,
                       hull: Any = None, step: float = 0.01, hosts: Sequence[str] | None = None,
                       top: int | None = None, stacked: bool = True,
                       within_hull: bool = True, spectrum_model: Model | None = None,
                       spectrum_params: Params = None, spectrum: str = "spectrum",
                       rank_by: str | None = None, confounding: Sequence[dict] | None = None,
                       boundary: bool = True) -> Directions:
    """Rank alloying directions from the one composition in ``batch`` (batch size 1) by the
    predicted change of the output for a step of ``step`` (default 1 at.%): add X at the
    expense of host h, for every ordered pair with ``x_h ≥ step`` (``hosts`` limits h), or of
    all others (``remove="others"``).

    ``params`` is a committee (leading member axis) unless ``stacked=False``. Each entry:
    ``add``, ``remove``, ``slope_fixed`` (committee-mean change with the other inputs, such as
    the spectrum, held fixed, output units), ``std_fixed``, ``agreement_fixed`` (fraction of
    members predicting an increase), ``composition`` after the step and ``outside_hull``
    (True when it leaves the convex hull of ``hull``, the training compositions; None
    without ``hull``). With ``spectrum_model`` (composition → ``spectrum``, paired members
    ``spectrum_params``) also ``slope_total``, ``std_total``, ``agreement_total``
    (:func:`total_gradients`: the spectrum moving with composition), ``gap`` (total − fixed),
    ``std_gap`` (committee spread of the paired per-member gap), ``gap_flag`` (the step's own
    gap judged by :func:`gap_verdict` against the largest |slope| of any step: ``"sign"``,
    ``"size"`` or ``""``) and ``flagged`` (the step's
    elements flagged by ``confounding``, rows of :func:`confounding_check`). ``slope``,
    ``std`` and ``agreement`` repeat the ``rank_by`` effect: ``"total"`` (default with a
    spectrum model) or ``"fixed"``.

    With ``within_hull`` (default) ``hull`` is required and out-of-hull steps go to
    :attr:`Directions.outside`, not into the ranking; ``within_hull=False`` ranks every step.
    With ``hull`` and ``boundary`` the :func:`boundary_report` of the reference is attached.
    ``top`` cuts both lists.
    """
    if within_hull and hull is None:
        raise ValueError("within_hull=True needs hull= (the training compositions, (n, n_el)); "
                         "pass within_hull=False to rank steps without a hull check")
    rank_by = rank_by or ("total" if spectrum_model is not None else "fixed")
    if rank_by not in ("total", "fixed"):
        raise ValueError(f"rank_by must be 'total' or 'fixed', got {rank_by!r}")
    if rank_by == "total" and spectrum_model is None:
        raise ValueError("rank_by='total' needs spectrum_model= and spectrum_params= "
                         "(a composition → spectrum model)")
    x = np.asarray(get_leaf(batch, wrt), np.float64)
    if x.ndim != 2 or x.shape[0] != 1:
        raise ValueError(f"suggest_directions needs a batch of one composition, got {x.shape}")
    if x.shape[1] != len(elements):
        raise ValueError(f"{len(elements)} element names for {x.shape[1]} composition columns")
    # per member (M, n_el); a parameter-free model (e.g. a generator) is a committee of one
    each = (jax.vmap if stacked and jax.tree_util.tree_leaves(params)
            else lambda fn: lambda *a: fn(*a)[None])
    grads = {"fixed": np.asarray(each(lambda p: input_gradients(
        model, p, batch, wrt, output, scale))(params))[:, 0]}
    if spectrum_model is not None:
        grads["total"] = np.asarray(each(lambda p, q: total_gradients(
            model, p, spectrum_model, q, batch, wrt, spectrum, output, scale))(
                params, spectrum_params))[:, 0]
    flagged = {r["element"] for r in (confounding or []) if r["flagged"]}
    xs = x[0]
    cands = []
    for add, host, d in alloying_steps(xs, elements, step, hosts):
        c = {"add": add, "remove": host, "composition": xs + step * d}
        for kind, gk in grads.items():
            slopes = step * (gk @ d)
            c[f"slope_{kind}"], c[f"std_{kind}"] = float(slopes.mean()), float(slopes.std())
            c[f"agreement_{kind}"] = float(np.mean(slopes > 0))
        if "total" in grads:
            c["gap"] = c["slope_total"] - c["slope_fixed"]
            c["std_gap"] = float((step * ((grads["total"] - grads["fixed"]) @ d)).std())
            c["flagged"] = [e for e in (add, host) if e in flagged]
        c.update({k: c[f"{k}_{rank_by}"] for k in ("slope", "std", "agreement")})
        cands.append(c)
    if "total" in grads:
        scale = max((max(abs(c["slope_fixed"]), abs(c["slope_total"])) for c in cands), default=0.0)
        for c in cands:
            c["gap_flag"] = gap_verdict(c["gap"], c["std_gap"], scale,
                                        c["slope_fixed"] * c["slope_total"] < 0)
    inside = (in_convex_hull(np.stack([c["composition"] for c in cands]), hull)
              if hull is not None and cands else [None] * len(cands))
    for c, ok in zip(cands, inside):
        c["outside_hull"] = None if ok is None else bool(not ok)
    cands.sort(key=lambda c: -c["slope"])
    ranked = [c for c in cands if not (within_hull and c["outside_hull"])]
    outside = [c for c in cands if within_hull and c["outside_hull"]]
    report = (boundary_report(xs, hull, elements, step, hosts, sample=str(batch.get("sample", "")))
              if hull is not None and boundary and cands else None)
    return Directions(ranked[:top or None], outside[:top or None], rank_by, report)
