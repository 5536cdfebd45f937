"""Confounding of composition by the spectrum: total composition gradients through a learned
composition → spectrum model, the fixed-spectrum vs total check per element, and how well
that spectrum model fits held-out spectra (per band)."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core.interpret.bands import find_bands
from jaxmat.core.interpret.gradients import (_masked_sum, committee, get_leaf, input_gradients,
                                             sample_mask, scalar_fn, simplex_derivatives)
from jaxmat.core.protocol import Model, Params


def total_gradients(model: Model, params: Params, spectrum_model: Model, spectrum_params: Params,
                    batch: dict, composition: str = "composition", spectrum: str = "spectrum",
                    output: str = "P", scale: float = 1.0,
                    spectrum_output: str = "spectrum") -> jax.Array:
    """Total composition gradient with the spectrum moving with composition (one member each):
    ``d P/d x = ∂P/∂x + ∂P/∂s · ds/dx``, by ``jax.grad`` of
    ``P(x, s_obs + ŝ(x) − ŝ(x_obs))`` at the observed ``x_obs``, where ŝ is
    ``spectrum_model`` (composition → ``spectrum_output``, trained on the same library). The
    model is evaluated at the measured spectrum; only its change comes from ŝ. Same shape and
    units as :func:`input_gradients` on ``composition``."""
    x0 = jnp.asarray(batch[composition])
    s_obs = jnp.asarray(batch[spectrum])
    f = scalar_fn(model, output, scale)

    def shat(x):
        out = spectrum_model.apply(spectrum_params, {**batch, composition: x})
        if spectrum_output not in out:
            raise ValueError(f"spectrum model outputs {sorted(out)}, not {spectrum_output!r}")
        if out[spectrum_output].shape != s_obs.shape:
            raise ValueError(f"spectrum model gives {out[spectrum_output].shape}, the batch's "
                             f"{spectrum!r} is {s_obs.shape}")
        return out[spectrum_output]

    s0 = jax.lax.stop_gradient(shat(x0))
    return jax.grad(lambda x: _masked_sum(
        f, params, {**batch, composition: x, spectrum: s_obs + shat(x) - s0}))(x0)


def confounding_check(model: Model, params: Params, spectrum_model: Model,
                      spectrum_params: Params, batch: dict, elements: Sequence[str],
                      output: str = "P", scale: float = 1.0, host: int | None = None,
                      per: float = 0.01, spectrum_committee: bool = True,
                      composition: str = "composition", spectrum: str = "spectrum",
                      z: float | None = None, min_share: float | None = None) -> list[dict]:
    """Conditional (spectrum held fixed) against total (spectrum moving, :func:`total_gradients`)
    effect of each element, as the change of the output when ``per`` (1 at.%) of it is added at
    the expense of the others (or of element ``host``), for a committee (stacked ``params``;
    ``spectrum_params`` stacked with the same members, paired, unless ``spectrum_committee``
    is False).

    Per element: ``conditional`` and ``total`` (library means of the committee mean, output
    units), their ``*_spread`` (library means of the per-sample committee standard
    deviation), ``gap`` (total − conditional), ``gap_spread`` (the same spread for the paired
    per-member gap: each member's conditional and total come from the same network, so most
    of their noise cancels), ``z`` (|gap| / gap_spread), ``share`` (|gap| over the largest
    |effect| of any element), ``sign_differs`` (fraction of samples whose committee-mean
    signs differ) and ``flagged`` with ``reason`` (:func:`gap_verdict`): the gap is beyond
    the committee noise (``z`` > :data:`GAP_Z`) and material (``share`` >
    :data:`GAP_MIN_SHARE`); ``"sign"`` when the two effects also have opposite signs,
    ``"size"`` otherwise. A flagged element's effect at fixed spectrum is not what adding it
    does. Needs at least two members.
    """
    dc, dt = _effects(model, spectrum_model, composition, spectrum, output, float(scale), host,
                      float(per), spectrum_committee, params, spectrum_params, batch)
    m = sample_mask(batch)
    keep = slice(None) if m is None else np.asarray(m, bool)
    return flag_confounding(np.asarray(dc)[:, keep], np.asarray(dt)[:, keep], elements, z, min_share)


@functools.partial(jax.jit, static_argnums=tuple(range(9)))
def _effects(model, spectrum_model, composition, spectrum, output, scale, host, per,
             spectrum_committee, params, spectrum_params, batch):
    """Per-member conditional and total simplex derivatives (compiled once per setting)."""
    x = get_leaf(batch, composition)
    cond = committee(lambda p: input_gradients(model, p, batch, composition, output, scale), params)
    tot = jax.vmap(lambda p, q: total_gradients(model, p, spectrum_model, q, batch, composition,
                                                spectrum, output, scale),
                   in_axes=(0, 0 if spectrum_committee else None))(params, spectrum_params)
    return simplex_derivatives(cond, x, host, per), simplex_derivatives(tot, x, host, per)


GAP_Z = 3.3  # gap / its paired committee spread; chosen by benchmarks/photoanode_directions.py
GAP_MIN_SHARE = 0.2  # |gap| / the largest |effect|; chosen there too


def gap_verdict(gap: float, gap_spread: float, scale: float, opposite: bool = False,
                z: float | None = None, min_share: float | None = None) -> str:
    """Reason code for a fixed-spectrum vs total gap (output units): ``"sign"`` or
    ``"size"`` when it is flagged (beyond ``z`` × its paired committee spread
    ``gap_spread`` and above ``min_share`` × ``scale``, the largest effect it is compared
    with; ``"sign"`` when the two effects have ``opposite`` signs), ``""`` when not.
    Defaults :data:`GAP_Z` and :data:`GAP_MIN_SHARE`, chosen on simulated libraries with
    known confounders."""
    z = GAP_Z if z is None else z
    min_share = GAP_MIN_SHARE if min_share is None else min_share
    if not (z >= 0 and min_share >= 0):
        raise ValueError(f"gap thresholds must be >= 0, got z={z}, min_share={min_share}")
    if abs(gap) <= z * gap_spread or abs(gap) <= min_share * scale:
        return ""
    return "sign" if opposite else "size"


def flag_confounding(conditional: Any, total: Any, elements: Sequence[str],
                     z: float | None = None, min_share: float | None = None) -> list[dict]:
    """The report of :func:`confounding_check` from per-member effects ``conditional`` and
    ``total``, each (members, samples, n_el) in output units; ``z`` and ``min_share`` as in
    :func:`gap_verdict`."""
    dc, dt = np.asarray(conditional, np.float64), np.asarray(total, np.float64)
    if dc.shape != dt.shape or dc.ndim != 3 or dc.shape[2] != len(elements):
        raise ValueError(f"need two (members, samples, {len(elements)}) arrays, got {dc.shape} "
                         f"and {dt.shape}")
    if dc.shape[0] < 2:
        raise ValueError(f"the confounding check needs a committee (>= 2 members) to tell a gap "
                         f"from noise, got {dc.shape[0]} member")
    scale = max(float(np.abs(dc.mean((0, 1))).max()), float(np.abs(dt.mean((0, 1))).max()))
    limits = {"z": GAP_Z if z is None else z, "share": GAP_MIN_SHARE if min_share is None else min_share}
    rows = []
    for k, e in enumerate(elements):
        c, t = dc[:, :, k], dt[:, :, k]
        r = {"element": e, "conditional": float(c.mean()), "total": float(t.mean()),
             "conditional_spread": float(c.std(0).mean()), "total_spread": float(t.std(0).mean()),
             "sign_differs": float(np.mean(np.sign(c.mean(0)) != np.sign(t.mean(0)))),
             "gap_spread": float((t - c).std(0).mean())}
        r["gap"] = r["total"] - r["conditional"]
        r["z"] = abs(r["gap"]) / r["gap_spread"] if r["gap_spread"] > 0 else float("inf")
        r["share"] = abs(r["gap"]) / scale if scale > 0 else 0.0
        reason = gap_verdict(r["gap"], r["gap_spread"], scale, r["total"] * r["conditional"] < 0,
                             limits["z"], limits["share"])
        rows.append({**r, "flagged": bool(reason), "reason": reason, "limits": limits})
    return rows


SPECTRUM_FIT_MIN_R2 = 0.44  # chosen by benchmarks/photoanode_directions.py (validation libraries)


def spectrum_fit(predicted: Any, observed: Any, raman_shift: Any, bands: Sequence[dict] | None = None,
                 saliency: Any = None, window: float = 1.0) -> dict:
    """Held-out fit of a composition → spectrum model: R² of ``predicted`` against
    ``observed`` spectra (n, L) over the whole axis (``r2``) and per band (``bands``: each
    with ``centre``, ``fwhm`` (cm⁻¹), ``r2`` over the points within ``window`` FWHM of the
    centre, and ``weight``, the band's share of |``saliency``|, the property model's mean
    ∂P/∂I (L,), or equal shares without it). R² pools the points of a window: 1 − Σ error² /
    Σ (I − per-point mean)². ``r2_read``: the weighted mean band R², the fit where the
    property model reads the spectrum, which total effects rely on. Bands default to
    :func:`find_bands` of the mean observed spectrum."""
    pr, ob = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    nu = np.asarray(raman_shift, np.float64)
    if pr.shape != ob.shape or ob.ndim != 2 or ob.shape[1] != len(nu) or len(ob) < 2:
        raise ValueError(f"need predicted and observed spectra (n >= 2, {len(nu)}), got "
                         f"{pr.shape} and {ob.shape}")
    err = ((pr - ob) ** 2).sum(0)
    var = ((ob - ob.mean(0)) ** 2).sum(0)
    if bands is None:
        try:
            bands = find_bands(ob.mean(0), nu)
        except ValueError:  # no clear band: the whole axis is the one window
            bands = []
    sal = None if saliency is None else np.abs(np.asarray(saliency, np.float64))
    if sal is not None and sal.shape != nu.shape:
        raise ValueError(f"saliency must be one value per Raman point ({nu.shape}), got {sal.shape}")
    out = []
    for b in bands:
        win = np.abs(nu - b["centre"]) <= window * b["fwhm"]
        if not win.any():
            raise ValueError(f"band at {b['centre']} cm⁻¹ has no points within {window} FWHM")
        out.append({"centre": float(b["centre"]), "fwhm": float(b["fwhm"]),
                    "r2": float(1 - err[win].sum() / max(var[win].sum(), 1e-30)),
                    "weight": 1.0 if sal is None else float(sal[win].sum())})
    total = sum(r["weight"] for r in out) or 1.0
    for r in out:
        r["weight"] /= total
    r2 = float(1 - err.sum() / max(var.sum(), 1e-30))
    return {"r2": r2, "bands": out, "n": len(ob),
            "r2_read": float(sum(r["weight"] * r["r2"] for r in out)) if out else r2}


def spectrum_fit_warning(fit: dict | None, min_r2: float | None = None) -> str | None:
    """A sentence when the composition → spectrum model's fit where the property model reads
    the spectrum (``r2_read`` of :func:`spectrum_fit`) is below ``min_r2`` (default
    :data:`SPECTRUM_FIT_MIN_R2`, chosen by ``benchmarks/photoanode_directions.py``: the
    lowest value below which every simulated validation library whose flags or total
    gradients went wrong falls);
    None otherwise."""
    if not fit:
        return None
    lim = SPECTRUM_FIT_MIN_R2 if min_r2 is None else min_r2
    if fit["r2_read"] >= lim:
        return None
    return (f"WARNING: composition explains little of the spectrum where the property model reads "
            f"it (held-out R² {fit['r2_read']:.2f} < {lim:.2f}; whole spectrum {fit['r2']:.2f}): the "
            f"spectrum varies mostly with something other than composition (processing, "
            f"crystallinity), so the total effects and the flags rest on a weak composition → "
            f"spectrum model; trust the fixed-spectrum effects only where no element is flagged.")


class ConfoundingReport(list):
    """The rows of :func:`confounding_check` (a list of dicts, one per element) and
    ``spectrum_fit`` (:func:`spectrum_fit` of the composition → spectrum model, or None),
    printed together by :func:`confounding_table`."""

    def __init__(self, rows: Sequence[dict], spectrum_fit: dict | None = None):
        super().__init__(rows)
        self.spectrum_fit = spectrum_fit

    @property
    def flagged(self) -> list[str]:
        return [r["element"] for r in self if r["flagged"]]

    @property
    def warning(self) -> str | None:
        return spectrum_fit_warning(self.spectrum_fit)


def confounding_table(rows: Sequence[dict], unit: str = "mW/cm² per at.%",
                      spectrum_fit: dict | None = None) -> str:
    """Plain-text table of :func:`confounding_check` rows: every element's effect at fixed
    spectrum and total effect (± committee spread), their gap with its paired committee
    spread, ``z``, ``share`` and the verdict (:func:`gap_verdict`); then the composition →
    spectrum fit per band (``spectrum_fit``, or the one a :class:`ConfoundingReport`
    carries) with a warning when it is too weak."""
    fit = spectrum_fit if spectrum_fit is not None else getattr(rows, "spectrum_fit", None)
    lim = rows[0]["limits"] if rows else {"z": GAP_Z, "share": GAP_MIN_SHARE}
    lines = [f"{'':3} {'at fixed spectrum':>17} {'spectrum moving':>17} {'gap':>7} "
             f"{'± paired':>8} {'z':>5} {'share':>5}  verdict   ({unit}; flagged when z > "
             f"{lim['z']:g} and share > {lim['share']:g})"]
    for r in rows:
        verdict = ("FLAG: opposite signs" if r["reason"] == "sign" else
                   "FLAG: gap beyond the noise" if r["flagged"] else
                   "gap within the noise" if r["z"] <= lim["z"] else "gap too small to matter")
        lines.append(f"{r['element']:3} {r['conditional']:+8.3f} ± {r['conditional_spread']:.3f} "
                     f"{r['total']:+8.3f} ± {r['total_spread']:.3f} {r['gap']:+7.3f} "
                     f"{r['gap_spread']:8.3f} {min(r['z'], 999.0):5.1f} {r['share']:5.2f}  {verdict}")
    if fit:
        bands = ", ".join(f"{b['centre']:.0f}: {b['r2']:.2f}" for b in fit["bands"])
        lines.append(f"composition → spectrum model, held-out R² ({fit['n']} spectra): whole "
                     f"spectrum {fit['r2']:.2f}; per band (cm⁻¹) {bands}; where P reads it "
                     f"{fit['r2_read']:.2f}")
        if warn := spectrum_fit_warning(fit):
            lines.append(warn)
    return "\n".join(lines)
