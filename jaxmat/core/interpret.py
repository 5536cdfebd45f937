"""Interpretation gradients of any protocol model (Umehara et al., npj Comput. Mater. 5:34, 2019).

Every tool differentiates one scalar per sample, ``output`` of ``model.apply`` times
``scale`` (e.g. the target's standard deviation, to report mW/cm² from a standardised
model), with respect to one input leaf ``wrt`` of the batch: a dict key (``"composition"``,
``"spectrum"``) or a path into a graph batch (``("nodes", "positions")``). Samples must not
interact (true for every model here in eval mode), so one ``jax.grad`` of the masked sum
gives all per-sample gradients. Gradients carry the output's units per input unit
(e.g. mW/cm² per unit fraction; × 0.01 gives per 1 at.%).

Composition gradients are also given as directional derivatives on the simplex: add
element X at the expense of all others (in proportion to their fractions) or of a named
host. Committee tools take stacked params (:mod:`jaxmat.core.ensemble`) and ``vmap`` over
members. :func:`total_gradients` lets the spectrum move with composition through a learned
composition → spectrum model; :func:`confounding_check` flags elements whose effect at fixed
spectrum and total effect disagree, and :func:`spectrum_fit` says how well that model fits
held-out spectra (per band). :func:`suggest_directions` ranks alloying directions (inside
the training hull by default; by the total effect when given the spectrum model) and
:func:`boundary_report` says where the reference sits in the training hull.
:func:`band_attribution` reads a spectrum saliency per band as shift vs width. Plotting
helpers import matplotlib lazily.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core.committee import stats
from jaxmat.core.protocol import Model, Params

Path = str | Sequence[str]


# --------------------------------------------------------------------------- batch access
def _path(wrt: Path) -> tuple[str, ...]:
    return (wrt,) if isinstance(wrt, str) else tuple(wrt)


def get_leaf(batch: Any, wrt: Path) -> jax.Array:
    """The input array at ``wrt`` (dict key or path through dicts / named tuples)."""
    x = batch
    for k in _path(wrt):
        try:
            x = x[k] if isinstance(x, dict) else getattr(x, k)
        except (KeyError, AttributeError):
            raise ValueError(f"batch has no input {'/'.join(_path(wrt))!r} (missing {k!r})") from None
    return x


def set_leaf(batch: Any, wrt: Path, value: Any) -> Any:
    """A shallow copy of ``batch`` with the leaf at ``wrt`` replaced."""
    p = _path(wrt)
    if not p:
        return value
    head, rest = p[0], p[1:]
    if isinstance(batch, dict):
        if head not in batch:
            raise ValueError(f"batch has no input {head!r}")
        return {**batch, head: set_leaf(batch[head], rest, value)}
    if hasattr(batch, "_replace"):
        return batch._replace(**{head: set_leaf(getattr(batch, head), rest, value)})
    raise ValueError(f"cannot set {head!r} on a batch of type {type(batch).__name__}")


def sample_mask(batch: Any) -> jax.Array | None:
    """The per-sample mask: ``batch["mask"]`` for dict batches, ``globals["mask"]`` for graphs."""
    if isinstance(batch, dict):
        return batch.get("mask")
    g = getattr(batch, "globals", None)
    return g.get("mask") if isinstance(g, dict) else None


def scalar_fn(model: Model, output: str = "P", scale: float = 1.0
              ) -> Callable[[Params, Any], jax.Array]:
    """``f(params, batch) -> (B,)``: ``scale * model.apply(params, batch)[output]`` (eval mode)."""

    def f(params, batch):
        out = model.apply(params, batch)
        if output not in out:
            raise ValueError(f"model outputs {sorted(out)}, not {output!r}")
        y = out[output]
        if y.ndim != 1:
            raise ValueError(f"output {output!r} must be one scalar per sample, got shape {y.shape}")
        return scale * y

    return f


def _masked_sum(f, params, batch):
    y = f(params, batch)
    m = sample_mask(batch)
    return jnp.sum(y if m is None else jnp.where(m, y, 0.0))


# --------------------------------------------------------------------------- gradients
def input_gradients(model: Model, params: Params, batch: Any, wrt: Path = "composition",
                    output: str = "P", scale: float = 1.0) -> jax.Array:
    """∂(scale · output_i)/∂(input_i) for every sample i; same shape as the input leaf
    (padding rows give 0)."""
    f = scalar_fn(model, output, scale)
    x = jnp.asarray(get_leaf(batch, wrt))
    return jax.grad(lambda xx: _masked_sum(f, params, set_leaf(batch, wrt, xx)))(x)


def integrated_gradients(model: Model, params: Params, batch: Any, wrt: Path = "composition",
                         baseline: Any = None, steps: int = 32, output: str = "P",
                         scale: float = 1.0) -> jax.Array:
    """Integrated gradients (x − x₀) ∫₀¹ ∂f/∂x(x₀ + α(x − x₀)) dα with ``steps`` Gauss–Legendre
    nodes; ``baseline`` x₀ is zeros, an array broadcastable to the input, or ``"mean"`` (the
    batch mean). Attributions of a sample sum to f(x) − f(x₀) (completeness)."""
    x = jnp.asarray(get_leaf(batch, wrt))
    if baseline is None:
        x0 = jnp.zeros_like(x)
    elif isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be None, an array or 'mean', got {baseline!r}")
        m = sample_mask(batch)
        w = jnp.ones(x.shape[0]) if m is None else m.astype(x.dtype)
        w = w.reshape((-1,) + (1,) * (x.ndim - 1))
        x0 = jnp.broadcast_to(jnp.sum(w * x, 0) / jnp.maximum(jnp.sum(w), 1.0), x.shape)
    else:
        x0 = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = jnp.asarray(0.5 * (nodes + 1.0), x.dtype)
    ws = jnp.asarray(0.5 * weights, x.dtype)
    f = scalar_fn(model, output, scale)
    grad = jax.grad(lambda xx: _masked_sum(f, params, set_leaf(batch, wrt, xx)))

    def body(acc, aw):
        a, w = aw
        return acc + w * grad(x0 + a * (x - x0)), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(x), (alphas, ws))
    return (x - x0) * total


def smoothgrad(model: Model, params: Params, batch: Any, key: jax.Array, wrt: Path = "composition",
               sigma: float = 0.01, n: int = 16, output: str = "P", scale: float = 1.0) -> jax.Array:
    """SmoothGrad: the mean input gradient over ``n`` copies of the input with Gaussian noise
    of standard deviation ``sigma`` (input units)."""
    x = jnp.asarray(get_leaf(batch, wrt))
    f = scalar_fn(model, output, scale)
    grad = jax.grad(lambda xx: _masked_sum(f, params, set_leaf(batch, wrt, xx)))

    def body(acc, k):
        return acc + grad(x + sigma * jax.random.normal(k, x.shape, x.dtype)), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(x), jax.random.split(key, n))
    return total / n


# --------------------------------------------------------------------------- composition simplex
def direction(composition: Any, add: int, remove: int | str | None = None) -> jax.Array:
    """Simplex direction adding one unit of element ``add`` (index), taken from element
    ``remove`` (index) or, with ``None``/``"others"``, from all others in proportion to their
    fractions. Components sum to 0. Adding at the expense of itself, or of others when
    there are none, moves nothing (zero vector)."""
    x = jnp.asarray(composition)
    e = jax.nn.one_hot(add, x.shape[-1], dtype=x.dtype)
    if remove is None or (isinstance(remove, str) and remove == "others"):
        rest = 1.0 - x[..., add:add + 1]
        safe = jnp.where(rest > 1e-12, rest, 1.0)
        return jnp.where(rest > 1e-12, (e - x) / safe, 0.0)
    if isinstance(remove, str):
        raise ValueError(f"remove must be an element index, None or 'others', got {remove!r}")
    return jnp.broadcast_to(e - jax.nn.one_hot(remove, x.shape[-1], dtype=x.dtype), x.shape)


def simplex_derivatives(grad: Any, composition: Any, host: int | None = None,
                        per: float = 0.01) -> jax.Array:
    """Directional derivatives of every element (last axis): the change of the output when
    ``per`` (default 0.01 = 1 at.%) of element X is added at the expense of the others
    (``host=None``) or of element ``host``. ``grad`` and ``composition`` are (..., n_el);
    a leading committee axis on ``grad`` is fine. The result is blind to the component of
    ``grad`` along (1, …, 1), which the data cannot determine."""
    g = jnp.asarray(grad)
    x = jnp.asarray(composition)
    n_el = x.shape[-1]
    if g.shape[-1] != n_el:
        raise ValueError(f"gradient has {g.shape[-1]} components, composition {n_el}")
    cols = [jnp.sum(g * direction(x, k, host), -1) for k in range(n_el)]
    return per * jnp.stack(cols, -1)


def per_at_percent(grad: Any) -> jax.Array:
    """Gradient per unit fraction → change per 1 at.% (× 0.01); no simplex constraint."""
    return 0.01 * jnp.asarray(grad)


def tangent(grad: Any) -> jax.Array:
    """Projection of composition gradients onto the simplex (subtract the component mean)."""
    g = jnp.asarray(grad)
    return g - jnp.mean(g, -1, keepdims=True)


# --------------------------------------------------------------------------- committees
def committee(fn: Callable[..., Any], params: Params, *args, **kwargs) -> Any:
    """``fn(member_params, *args, **kwargs)`` for every member of stacked ``params`` (vmap);
    outputs gain a leading member axis. ``fn`` is e.g. ``partial(input_gradients, model)``
    with params as its first positional argument."""
    return jax.vmap(lambda p: fn(p, *args, **kwargs))(params)


def committee_stats(values: Any, axis: int = 0) -> dict[str, jax.Array]:
    """Mean, standard deviation and sign agreement (fraction of members whose sign equals
    that of the mean, in [0, 1]) over the member ``axis``."""
    v = jnp.moveaxis(jnp.asarray(values), axis, 0)
    st = stats({"v": v})
    agree = jnp.mean(jnp.sign(v) == jnp.sign(st["v_mean"])[None], 0)
    return {"mean": st["v_mean"], "std": jnp.sqrt(st["v_var"]), "sign_agreement": agree}


def gradient_correlation(grads: Any, extra: Any = None, mask: Any = None) -> jax.Array:
    """Pearson correlation matrix across samples between gradient components (columns of
    ``grads`` (n, k)) and optional ``extra`` columns (n, m), e.g. compositions or a spectral
    feature. Constant columns give NaN rows/columns. Jit-friendly; ``mask`` (n,) drops rows."""
    a = jnp.asarray(grads)
    a = a.reshape(a.shape[0], -1)
    if extra is not None:
        e = jnp.asarray(extra)
        a = jnp.concatenate([a, e.reshape(e.shape[0], -1).astype(a.dtype)], 1)
    w = jnp.ones(a.shape[0], a.dtype) if mask is None else jnp.asarray(mask, a.dtype)
    n = jnp.sum(w)
    mu = jnp.sum(w[:, None] * a, 0) / n
    c = (a - mu) * w[:, None]
    cov = c.T @ c / n
    sd = jnp.sqrt(jnp.diag(cov))
    return cov / (sd[:, None] * sd[None, :])


def cosine_similarity(a: Any, b: Any, axis: int = -1) -> jax.Array:
    """Cosine similarity along ``axis`` (NaN where a vector is zero)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.sum(a * b, axis) / (jnp.linalg.norm(a, axis=axis) * jnp.linalg.norm(b, axis=axis))


# --------------------------------------------------------------------------- everything at once
def explain(model: Model, params: Params, batch: dict, composition: str = "composition",
            spectrum: str | None = "spectrum", output: str = "P", scale: float = 1.0,
            ig_steps: int = 16, smooth_n: int = 8, smooth_sigma: float = 0.05,
            key: jax.Array | None = None) -> dict[str, jax.Array]:
    """All interpretation outputs of a committee (stacked ``params``) on one dict batch, as
    one jittable function (``jax.jit(partial(explain, model), static_argnames=...)``).

    Returns committee ``*_mean``/``*_std`` and ``*_agree`` (sign agreement) of: ``grad``
    (composition gradient, output units per unit fraction), ``dilute`` (per 1 at.% at the
    expense of the others), ``saliency`` (spectrum gradient); ``ig_spectrum`` and
    ``smooth_spectrum`` (committee-mean integrated gradients from a zero spectrum and
    SmoothGrad with noise ``smooth_sigma``); ``corr`` (Pearson matrix across samples of the
    mean ``dilute`` derivatives with the compositions appended, 2 n_el × 2 n_el) and
    ``pred_mean``/``pred_std`` (output units).
    """
    key = jax.random.key(0) if key is None else key
    f = scalar_fn(model, output, scale)
    x = batch[composition]
    out: dict[str, jax.Array] = {}
    pred = jax.vmap(lambda p: f(p, batch))(params)
    out["pred_mean"], out["pred_std"] = pred.mean(0), pred.std(0)
    g = committee(lambda p: input_gradients(model, p, batch, composition, output, scale), params)
    for name, v in (("grad", g), ("dilute", simplex_derivatives(g, x))):
        st = committee_stats(v)
        out[f"{name}_mean"], out[f"{name}_std"], out[f"{name}_agree"] = (
            st["mean"], st["std"], st["sign_agreement"])
    if spectrum is not None:
        s = committee(lambda p: input_gradients(model, p, batch, spectrum, output, scale), params)
        st = committee_stats(s)
        out["saliency_mean"], out["saliency_std"], out["saliency_agree"] = (
            st["mean"], st["std"], st["sign_agreement"])
        out["ig_spectrum"] = committee(lambda p: integrated_gradients(
            model, p, batch, spectrum, None, ig_steps, output, scale), params).mean(0)
        out["smooth_spectrum"] = committee(lambda p: smoothgrad(
            model, p, batch, key, spectrum, smooth_sigma, smooth_n, output, scale), params).mean(0)
    out["corr"] = gradient_correlation(out["dilute_mean"], x, sample_mask(batch))
    return out


# --------------------------------------------------------------------------- confounding
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

    def total(x):
        b = {**batch, composition: x, spectrum: s_obs + shat(x) - s0}
        return _masked_sum(f, params, b)

    return jax.grad(total)(x0)


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
    keep = np.ones(dc.shape[1], bool) if m is None else np.asarray(m, bool)
    return flag_confounding(np.asarray(dc)[:, keep], np.asarray(dt)[:, keep], elements)


@functools.partial(jax.jit, static_argnums=tuple(range(9)))
def _effects(model, spectrum_model, composition, spectrum, output, scale, host, per,
             spectrum_committee, params, spectrum_params, batch):
    """Per-member conditional and total simplex derivatives (compiled once per setting)."""
    x = get_leaf(batch, composition)
    cond = committee(lambda p: input_gradients(model, p, batch, composition, output, scale),
                     params)
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
        if r["total"] * r["conditional"] < 0 and gap > max(r["conditional_spread"],
                                                             r["total_spread"]):
            r["flagged"], r["reason"] = True, "sign"
        elif gap > r["conditional_spread"] + r["total_spread"]:
            r["flagged"], r["reason"] = True, "size"
        else:
            r["flagged"], r["reason"] = False, ""
        rows.append(r)
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
        gap = r["total"] - r["conditional"]
        spreads = r["conditional_spread"] + r["total_spread"]
        if r["flagged"]:
            verdict = ("FLAG: opposite signs, gap > the larger spread" if r["reason"] == "sign"
                       else "FLAG: gap > the sum of the spreads")
        else:
            verdict = "gap within the spreads"
        lines.append(f"{r['element']:3} {r['conditional']:+8.3f} ± {r['conditional_spread']:.3f} "
                     f"{r['total']:+8.3f} ± {r['total_spread']:.3f} {gap:+7.3f} {spreads:7.3f}  "
                     f"{verdict}")
    if fit:
        bands = ", ".join(f"{b['centre']:.0f}: {b['r2']:.2f}" for b in fit["bands"])
        lines.append(f"composition → spectrum model, held-out R² ({fit['n']} spectra): whole "
                     f"spectrum {fit['r2']:.2f}; per band (cm⁻¹) {bands}; where P reads it "
                     f"{fit['r2_read']:.2f}")
        warn = spectrum_fit_warning(fit)
        if warn:
            lines.append(warn)
    return "\n".join(lines)


# --------------------------------------------------------------------------- spectral bands
def find_bands(spectrum: Any, raman_shift: Any, prominence: float = 0.05,
               max_bands: int = 8) -> list[dict]:
    """Bands of a (mean) spectrum: ``centre`` and ``fwhm`` (cm⁻¹) of the ``max_bands`` most
    prominent peaks (scipy.signal.find_peaks / peak_widths; ``prominence`` in intensity units),
    sorted by centre."""
    from scipy.signal import find_peaks, peak_widths

    y = np.asarray(spectrum, np.float64)
    nu = np.asarray(raman_shift, np.float64)
    if y.ndim != 1 or y.shape != nu.shape:
        raise ValueError(f"need one spectrum on its axis, got {y.shape} and {nu.shape}")
    peaks, props = find_peaks(y, prominence=prominence)
    if len(peaks) == 0:
        raise ValueError(f"no band with prominence >= {prominence} in the spectrum")
    order = np.argsort(props["prominences"])[::-1][:max_bands]
    peaks = np.sort(peaks[order])
    widths = peak_widths(y, peaks, rel_height=0.5)[0] * np.median(np.diff(nu))
    return [{"centre": float(nu[p]), "fwhm": float(w)} for p, w in zip(peaks, widths)]


def band_attribution(saliency: Any, spectrum: Any, raman_shift: Any,
                     bands: Sequence[dict] | None = None, window: float = 1.5) -> list[dict]:
    """Spectral attribution per band, split into shift and width.

    ``saliency`` ∂P/∂I is (members, n, L) or (n, L) on the ``spectrum`` (n, L) it was taken at;
    ``bands`` (``centre``, ``fwhm`` in cm⁻¹) default to :func:`find_bands` of the mean spectrum.
    For each band and sample, the band's local profile I(ν) within ``window`` FWHM of its
    centre (the sample's maximum near the band centre) is moved by the shift operator
    −dI/dν and stretched about the centre at fixed height, −(ν − c)/w · dI/dν; projecting the
    saliency on these gives ``d_shift`` (output change per +1 cm⁻¹ of band position) and
    ``d_width`` (per +1 cm⁻¹ of FWHM). ``centre_share``: the share of the band's |saliency|
    within half a FWHM of the centre (the rest lies on the wings). Means over samples of the
    committee mean, with ``*_std`` the committee spread of the sample mean.
    """
    S = np.asarray(saliency, np.float64)
    S = S[None] if S.ndim == 2 else S
    I = np.asarray(spectrum, np.float64)
    nu = np.asarray(raman_shift, np.float64)
    if S.shape[1:] != I.shape or I.shape[1] != nu.shape[0]:
        raise ValueError(f"saliency {S.shape}, spectrum {I.shape} and axis {nu.shape} disagree")
    bands = find_bands(I.mean(0), nu) if bands is None else bands
    dI = np.gradient(I, nu, axis=1)
    out = []
    for b in bands:
        c0, w = float(b["centre"]), float(b["fwhm"])
        near = np.abs(nu - c0) <= 0.5 * w
        if not near.any():
            raise ValueError(f"band at {c0} cm⁻¹ has no points within half its FWHM ({w} cm⁻¹)")
        idx = np.flatnonzero(near)
        c = nu[idx[np.argmax(I[:, idx], axis=1)]][:, None]  # (n, 1) per-sample centre
        d = nu[None] - c
        win = np.abs(d) <= window * w
        shift_op = np.where(win, -dI, 0.0)
        width_op = np.where(win, -d / w * dI, 0.0)
        d_shift = np.einsum("mnl,nl->mn", S, shift_op).mean(1)
        d_width = np.einsum("mnl,nl->mn", S, width_op).mean(1)
        a = np.abs(S.mean(0))
        core = np.sum(np.where(np.abs(d) <= 0.5 * w, a, 0.0))
        out.append({"centre": c0, "fwhm": w, "d_shift": float(d_shift.mean()),
                    "d_shift_std": float(d_shift.std()), "d_width": float(d_width.mean()),
                    "d_width_std": float(d_width.std()),
                    "centre_share": float(core / max(np.sum(np.where(win, a, 0.0)), 1e-30))})
    return out


def band_table(rows: Sequence[dict], unit: str = "mW/cm²") -> str:
    """Plain-text table of :func:`band_attribution` rows."""
    lines = [f"{'band (cm⁻¹)':>12} {'FWHM':>6} {'dP/dshift':>18} {'dP/dwidth':>18} {'centre':>7}"
             f"   ({unit} per cm⁻¹)"]
    for r in rows:
        lines.append(f"{r['centre']:12.0f} {r['fwhm']:6.1f} {r['d_shift']:+10.4f} ± "
                     f"{r['d_shift_std']:.4f} {r['d_width']:+10.4f} ± {r['d_width_std']:.4f} "
                     f"{r['centre_share']:6.0%}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- suggestions
BOUNDARY_MIN_INSIDE = 0.5  # provisional; chosen by benchmarks/photoanode_directions.py


def in_convex_hull(points: Any, hull_points: Any, tol: float = 1e-9) -> np.ndarray:
    """Whether each row of ``points`` is a convex combination of rows of ``hull_points``
    (one linear programme each, scipy HiGHS)."""
    from scipy.optimize import linprog

    P = np.atleast_2d(np.asarray(points, np.float64))
    H = _hull_points(hull_points, P.shape[1])
    A = np.vstack([H.T, np.ones((1, len(H)))])
    out = []
    for p in P:
        res = linprog(np.zeros(len(H)), A_eq=A, b_eq=np.append(p, 1.0), bounds=(0, None),
                      method="highs")
        out.append(res.status == 0 and np.abs(A @ res.x - np.append(p, 1.0)).max() < 1e-6 + tol)
    return np.array(out)


def _hull_points(hull_points: Any, n_el: int) -> np.ndarray:
    H = np.asarray(hull_points, np.float64)
    if H.ndim != 2 or H.shape[1] != n_el or len(H) == 0:
        raise ValueError(f"hull points must be (n, {n_el}), got {H.shape}")
    return H


def hull_distance(point: Any, hull_points: Any) -> float:
    """L1 distance (same units as the fractions) from ``point`` to the convex hull of
    ``hull_points``: min ‖point − Hᵀλ‖₁ over λ ≥ 0, Σλ = 1 (a linear programme); 0 inside."""
    from scipy.optimize import linprog

    p = np.asarray(point, np.float64).ravel()
    H = _hull_points(hull_points, len(p))
    n, k = len(H), len(p)
    A = np.block([[H.T, np.eye(k), -np.eye(k)], [np.ones((1, n)), np.zeros((1, 2 * k))]])
    c = np.concatenate([np.zeros(n), np.ones(2 * k)])
    res = linprog(c, A_eq=A, b_eq=np.append(p, 1.0), bounds=(0, None), method="highs")
    if res.status != 0:
        raise ValueError(f"distance to the hull failed: {res.message}")
    return float(max(res.fun, 0.0))


def hull_room(point: Any, step_direction: Any, hull_points: Any, cap: float = 0.1) -> float:
    """How far (up to ``cap``, in units of the direction) ``point`` can move along
    ``step_direction`` and stay in the convex hull of ``hull_points`` (a linear programme;
    0 when the point itself is outside or sits on a facet the direction leaves through)."""
    from scipy.optimize import linprog

    p = np.asarray(point, np.float64).ravel()
    d = np.asarray(step_direction, np.float64).ravel()
    H = _hull_points(hull_points, len(p))
    n = len(H)
    A = np.vstack([np.hstack([H.T, -d[:, None]]), np.append(np.ones(n), 0.0)[None]])
    c = np.append(np.zeros(n), -1.0)
    res = linprog(c, A_eq=A, b_eq=np.append(p, 1.0), bounds=[(0, None)] * n + [(0, cap)],
                  method="highs")
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
    out = []
    for a in range(len(elements)):
        options: list[int | None] = [h for h in host_idx if h != a and xs[h] >= step - 1e-12]
        if xs[a] < 1.0:
            options.append(None)
        for h in options:
            out.append((elements[a], "others" if h is None else elements[h],
                        np.asarray(direction(xs, a, h), np.float64)))
    return out


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
    :data:`BOUNDARY_MIN_INSIDE`, provisional until chosen on simulated libraries with known
    gradients by ``benchmarks/photoanode_directions.py``)."""
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
        when its own gap exceeds the two spreads) and whether it stays in the hull; the
        boundary report first, with its warning when the reference sits on the hull."""
        two = any("slope_total" in c for c in self.ranked + self.outside)
        first = "total" if self.rank_by == "total" else "fixed spectrum"
        head = f"{'add':>4} {'for':>7} {'ΔP ' + first + ' (' + unit + ')':>24}"
        if two:
            other = "at fixed spectrum" if self.rank_by == "total" else "total"
            head += f" {other:>17} {'gap':>7} {'flag':>6}"
        head += f" {'agree':>5} {'hull':>4}"

        def row(c):
            s = f"{c['add']:>4} {c['remove']:>7} {c['slope']:+15.3f} ± {c['std']:.3f}"
            if two:
                o = "fixed" if self.rank_by == "total" else "total"
                flag = ",".join(c["flagged"]) + ("*" if c["gap_exceeds_spreads"] else "")
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
    ``gap_exceeds_spreads`` (|gap| > std_fixed + std_total) and ``flagged`` (the step's
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
    fn = lambda p: input_gradients(model, p, batch, wrt, output, scale)  # noqa: E731
    if not jax.tree_util.tree_leaves(params):  # a parameter-free model (e.g. a generator)
        g = np.asarray(fn(params))[None, 0]
    elif stacked:
        g = np.asarray(committee(fn, params))[:, 0]  # (M, n_el)
    else:
        g = np.asarray(fn(params))[None, 0]
    grads = {"fixed": g}
    if spectrum_model is not None:
        tot = lambda p, q: total_gradients(model, p, spectrum_model, q, batch, wrt,  # noqa: E731
                                           spectrum, output, scale)
        if stacked and jax.tree_util.tree_leaves(params):
            grads["total"] = np.asarray(jax.vmap(tot)(params, spectrum_params))[:, 0]
        else:
            grads["total"] = np.asarray(tot(params, spectrum_params))[None, 0]
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
            c["gap_exceeds_spreads"] = bool(abs(c["gap"]) > c["std_fixed"] + c["std_total"])
            c["flagged"] = [e for e in (add, host) if e in flagged]
        c["slope"], c["std"], c["agreement"] = (c[f"{k}_{rank_by}"] for k in ("slope", "std",
                                                                            "agreement"))
        cands.append(c)
    if hull is not None and cands:
        inside = in_convex_hull(np.stack([c["composition"] for c in cands]), hull)
        for c, ok in zip(cands, inside):
            c["outside_hull"] = bool(not ok)
    else:
        for c in cands:
            c["outside_hull"] = None
    cands.sort(key=lambda c: -c["slope"])
    ranked = [c for c in cands if not (within_hull and c["outside_hull"])]
    outside = [c for c in cands if within_hull and c["outside_hull"]]
    report = None
    if hull is not None and boundary and cands:
        report = boundary_report(xs, hull, elements, step, hosts, sample=str(batch.get("sample", "")))
    return Directions(ranked[:top] if top else ranked, outside[:top] if top else outside, rank_by,
                      report)


# --------------------------------------------------------------------------- plots
def plot_composition_map(composition: Any, values: Any, elements: Sequence[str],
                         axes: Sequence[str], ax: Any = None, label: str = "", title: str = "",
                         cmap: str = "RdBu_r", s: float = 12.0):
    """Scatter map of a per-sample quantity (e.g. ∂P/∂Gd per at.%) over a composition slice:
    two element names → pseudo-binary (at.% of each on x/y); three → ternary coordinates
    of the fractions renormalised over those three. Diverging colours centred at 0."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    X = np.asarray(composition, np.float64)
    v = np.asarray(values, np.float64)
    idx = [list(elements).index(e) for e in axes]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    lim = np.nanmax(np.abs(v)) or 1.0
    norm = TwoSlopeNorm(0.0, -lim, lim)
    if len(idx) == 2:
        sc = ax.scatter(100 * X[:, idx[0]], 100 * X[:, idx[1]], c=v, cmap=cmap, norm=norm, s=s)
        ax.set_xlabel(f"{axes[0]} (at.%)")
        ax.set_ylabel(f"{axes[1]} (at.%)")
    elif len(idx) == 3:
        sub = X[:, idx]
        tot = sub.sum(1)
        keep = tot > 0
        f = sub[keep] / tot[keep, None]
        px = f[:, 1] + 0.5 * f[:, 2]
        py = np.sqrt(3) / 2 * f[:, 2]
        ax.plot([0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0], "k-", lw=0.8)
        for (tx, ty), name in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], axes):
            ax.annotate(name, (tx, ty), ha="center", va="top" if ty == 0 else "bottom",
                        xytext=(0, -4 if ty == 0 else 4), textcoords="offset points")
        sc = ax.scatter(px, py, c=v[keep], cmap=cmap, norm=norm, s=s)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_ylim(-0.08, np.sqrt(3) / 2 + 0.1)
    else:
        raise ValueError(f"axes must name 2 (pseudo-binary) or 3 (ternary) elements, got {axes}")
    ax.figure.colorbar(sc, ax=ax, label=label)
    if title:
        ax.set_title(title)
    return ax


def plot_spectrum_saliency(raman_shift: Any, saliency: Any, spread: Any = None,
                           spectrum: Any = None, ax: Any = None, label: str = "∂P/∂I",
                           title: str = ""):
    """Saliency along the Raman axis (cm⁻¹) with an optional ±``spread`` band and the
    (mean) spectrum on a second axis."""
    import matplotlib.pyplot as plt

    nu = np.asarray(raman_shift)
    sal = np.asarray(saliency)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    ax.plot(nu, sal, color="C3", lw=1.0, label=label)
    if spread is not None:
        sp = np.asarray(spread)
        ax.fill_between(nu, sal - sp, sal + sp, color="C3", alpha=0.25, lw=0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("Raman shift (cm⁻¹)")
    ax.set_ylabel(label)
    if spectrum is not None:
        ax2 = ax.twinx()
        ax2.plot(nu, np.asarray(spectrum), color="0.5", lw=0.8)
        ax2.set_ylabel("normalised intensity", color="0.5")
    if title:
        ax.set_title(title)
    return ax


def plot_correlation(matrix: Any, names: Sequence[str], ax: Any = None, title: str = "",
                     annotate: bool = True):
    """Heat map of a correlation matrix (−1 … 1) with labelled rows and columns."""
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    if m.shape != (len(names), len(names)):
        raise ValueError(f"matrix {m.shape} does not match {len(names)} names")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * len(names) + 2, 0.5 * len(names) + 1.5))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    if annotate:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=6)
    ax.figure.colorbar(im, ax=ax, label="Pearson r")
    if title:
        ax.set_title(title)
    return ax
