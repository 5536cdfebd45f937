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
                      composition: str = "composition", spectrum: str = "spectrum") -> list[dict]:
    """Conditional (spectrum held fixed) against total (spectrum moving, :func:`total_gradients`)
    effect of each element, as the change of the output when ``per`` (1 at.%) of it is added at
    the expense of the others (or of element ``host``), for a committee (stacked ``params``;
    ``spectrum_params`` stacked with the same members, paired, unless ``spectrum_committee``
    is False).

    Per element: ``conditional`` and ``total`` (library means of the committee mean, output
    units), their ``*_spread`` (library means of the per-sample committee standard
    deviation), ``gap_spread`` (the same for the paired per-member gap total − conditional),
    ``sign_differs`` (fraction of samples whose committee-mean signs differ) and
    ``flagged`` with ``reason``: the two means have opposite signs and differ by more than
    the larger spread (``"sign"``; opposite signs within the noise do not count), or differ by
    more than the sum of their spreads (``"size"``). A flagged element's effect at fixed
    spectrum is not what adding it does.
    """
    dc, dt = _effects(model, spectrum_model, composition, spectrum, output, float(scale), host,
                      float(per), spectrum_committee, params, spectrum_params, batch)
    m = sample_mask(batch)
    keep = slice(None) if m is None else np.asarray(m, bool)
    return flag_confounding(np.asarray(dc)[:, keep], np.asarray(dt)[:, keep], elements)


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


def flag_confounding(conditional: Any, total: Any, elements: Sequence[str]) -> list[dict]:
    """The report of :func:`confounding_check` from per-member effects ``conditional`` and
    ``total``, each (members, samples, n_el) in output units."""
    dc, dt = np.asarray(conditional, np.float64), np.asarray(total, np.float64)
    if dc.shape != dt.shape or dc.ndim != 3 or dc.shape[2] != len(elements):
        raise ValueError(f"need two (members, samples, {len(elements)}) arrays, got {dc.shape} "
                         f"and {dt.shape}")
    rows = []
    for k, e in enumerate(elements):
        c, t = dc[:, :, k], dt[:, :, k]
        r = {"element": e, "conditional": float(c.mean()), "total": float(t.mean()),
             "conditional_spread": float(c.std(0).mean()), "total_spread": float(t.std(0).mean()),
             "sign_differs": float(np.mean(np.sign(c.mean(0)) != np.sign(t.mean(0)))),
             "gap_spread": float((t - c).std(0).mean())}
        gap = abs(r["total"] - r["conditional"])
        spreads = (r["conditional_spread"], r["total_spread"])
        reason = ("sign" if r["total"] * r["conditional"] < 0 and gap > max(spreads) else
                  "size" if gap > sum(spreads) else "")
        rows.append({**r, "flagged": bool(reason), "reason": reason})
    return rows


SPECTRUM_FIT_MIN_R2 = 0.5  # provisional; chosen by benchmarks/photoanode_directions.py


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
    :data:`SPECTRUM_FIT_MIN_R2`, provisional until chosen on simulated libraries with known
    total gradients by ``benchmarks/photoanode_directions.py``);
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
    spectrum and total effect (± committee spread), their gap, the spreads it is compared with
    and the verdict; then the composition → spectrum fit per band (``spectrum_fit``, or the
    one a :class:`ConfoundingReport` carries) with a warning when it is too weak."""
    fit = spectrum_fit if spectrum_fit is not None else getattr(rows, "spectrum_fit", None)
    lines = [f"{'':3} {'at fixed spectrum':>17} {'spectrum moving':>17} {'gap':>7} "
             f"{'spreads':>7}  verdict   ({unit})"]
    for r in rows:
        verdict = ("gap within the spreads" if not r["flagged"] else
                   "FLAG: opposite signs, gap > the larger spread" if r["reason"] == "sign" else
                   "FLAG: gap > the sum of the spreads")
        lines.append(f"{r['element']:3} {r['conditional']:+8.3f} ± {r['conditional_spread']:.3f} "
                     f"{r['total']:+8.3f} ± {r['total_spread']:.3f} "
                     f"{r['total'] - r['conditional']:+7.3f} "
                     f"{r['conditional_spread'] + r['total_spread']:7.3f}  {verdict}")
    if fit:
        bands = ", ".join(f"{b['centre']:.0f}: {b['r2']:.2f}" for b in fit["bands"])
        lines.append(f"composition → spectrum model, held-out R² ({fit['n']} spectra): whole "
                     f"spectrum {fit['r2']:.2f}; per band (cm⁻¹) {bands}; where P reads it "
                     f"{fit['r2_read']:.2f}")
        if warn := spectrum_fit_warning(fit):
            lines.append(warn)
    return "\n".join(lines)
