"""Uncertainty calibration of committee predictions.

Inputs are errors ``err = prediction - target`` and predicted standard deviations ``sigma``
in the same unit (e.g. eV/Å for force components, eV for energies), as arrays of any shape
(flattened). Under a calibrated Gaussian model ``err ~ N(0, sigma²)``:

* :func:`gaussian_nll` -- mean negative log-likelihood (nats per value);
* :func:`spearman` -- rank correlation of ``|err|`` with ``sigma`` (ranking quality);
* :func:`calibration_curve` / :func:`miscalibration_area` -- observed vs expected fraction of
  errors inside the central interval of each probability level;
* :func:`coverage` -- fraction of ``|err| <= z_p sigma`` (0.68 and 0.95 expected);
* :func:`fit_scale` -- the recalibration factor ``s`` (``sigma -> s sigma``) that minimises the
  Gaussian NLL on validation data, in closed form ``s² = mean(err² / sigma²)`` (or, robustly,
  matches the median of ``|err| / sigma``);
  :func:`recalibrate` applies it at prediction time;
* :func:`fit_power` -- ``sigma -> a sigma^b`` with the least Gaussian NLL: ``b < 1``
  compresses a committee σ whose spread is wider than that of the errors (committees of a few
  members rank errors weakly; one factor then over-covers at 68 % and under-covers at 95 %);
* :func:`fit_targets` -- one map per target (energy, forces) with the metrics before and
  after, the ``calibration`` section of a committee bundle. An entry is
  ``{"scale": a, "power": b, "knee": k, ...}``:
  ``sigma_cal = a min(sigma, k)^b max(sigma / k, 1)`` (:func:`apply_map`) -- the power law up
  to the largest validation σ ``k``, linear beyond it, so that a σ larger than any the map was
  fitted on (an extrapolating structure) is not compressed. Entries with only ``scale`` (older
  bundles, ``method="nll"``) are ``a sigma``. :func:`scale_outputs` applies the map to the
  variances of :func:`jaxmat.core.predict.predict`.

Plots (:func:`plot_calibration`, :func:`plot_error_vs_sigma`, :func:`plot_parity`) import
matplotlib only when called.
"""
from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from collections.abc import Sequence
from typing import Any

import numpy as np

_SQRT2 = math.sqrt(2.0)


def _check(err: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray]:
    err = np.asarray(err, dtype=np.float64).ravel()
    sigma = np.asarray(sigma, dtype=np.float64).ravel()
    if err.shape != sigma.shape:
        raise ValueError(f"errors and sigmas must have the same size, got {err.size} and "
                         f"{sigma.size}")
    if err.size == 0:
        raise ValueError("no errors to calibrate (empty input)")
    if not np.all(np.isfinite(err)):
        raise ValueError(f"non-finite (NaN/inf) errors/predictions at index "
                         f"{int(np.flatnonzero(~np.isfinite(err))[0])}")
    if not np.all(np.isfinite(sigma)):
        raise ValueError(f"non-finite (NaN/inf) sigma at index "
                         f"{int(np.flatnonzero(~np.isfinite(sigma))[0])}")
    if np.any(sigma <= 0):
        raise ValueError(f"sigma must be positive; {int(np.sum(sigma <= 0))} value(s) are <= 0")
    return err, sigma


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[float])(x)


def _z_of(p: float) -> float:
    """Half-width (in sigmas) of the central interval holding probability ``p`` of N(0, 1)."""
    return NormalDist().inv_cdf(0.5 * (1.0 + float(p)))


def gaussian_nll(err: Any, sigma: Any) -> float:
    """Mean Gaussian negative log-likelihood ``½ log(2π σ²) + err² / (2σ²)`` (nats)."""
    e, s = _check(err, sigma)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (e / s) ** 2))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x))
    start = 0
    for k in range(1, len(x) + 1):
        if k == len(x) or xs[k] != xs[start]:
            ranks[order[start:k]] = 0.5 * (start + k - 1) + 1.0
            start = k
    return ranks


def spearman(err: Any, sigma: Any) -> float:
    """Spearman rank correlation between ``|err|`` and ``sigma`` (1 = perfect ranking)."""
    e, s = _check(err, sigma)
    if e.size < 2:
        raise ValueError("Spearman correlation needs at least 2 values")
    ra, rb = _ranks(np.abs(e)), _ranks(s)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(np.sum(ra**2) * np.sum(rb**2)))
    return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def coverage(err: Any, sigma: Any, p: float = 0.95) -> float:
    """Observed fraction of values with ``|err| <= z_p sigma`` (``p`` expected if calibrated)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability level must lie in (0, 1), got {p}")
    e, s = _check(err, sigma)
    return float(np.mean(np.abs(e) <= _z_of(p) * s))


def calibration_curve(err: Any, sigma: Any, n_levels: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """``(expected, observed)``: probability levels ``p`` on an even grid in (0, 1) and the
    observed fraction of errors inside the central ``p`` interval of ``N(0, sigma²)``."""
    e, s = _check(err, sigma)
    expected = np.linspace(0.0, 1.0, n_levels + 2)[1:-1]
    # the level at which each error leaves its interval: P(|Z| <= |e|/s)
    level = np.sort(_erf(np.abs(e) / s / _SQRT2))
    observed = np.searchsorted(level, expected, side="right") / e.size
    return expected, observed


def miscalibration_area(err: Any, sigma: Any, n_levels: int = 99) -> float:
    """Mean ``|observed - expected|`` over the calibration curve (0 = calibrated, max 0.5)."""
    expected, observed = calibration_curve(err, sigma, n_levels)
    return float(np.mean(np.abs(observed - expected)))


def fit_scale(err: Any, sigma: Any, method: str = "nll") -> float:
    """Recalibration factor ``s`` (``sigma -> s sigma``) from validation data.

    ``method="nll"`` (default) minimises the Gaussian NLL of ``N(0, (s sigma)²)``:
    ``s = sqrt(mean(err² / sigma²))`` (closed form). ``method="median"`` matches the median of
    ``|err| / sigma`` to that of ``|N(0, 1)|`` (0.6745), which heavy-tailed errors pull less.
    """
    e, s = _check(err, sigma)
    if method == "nll":
        scale = math.sqrt(float(np.mean((e / s) ** 2)))
    elif method == "median":
        scale = float(np.median(np.abs(e) / s)) / _z_of(0.5)
    else:
        raise ValueError(f"unknown recalibration method {method!r}; use 'nll' or 'median'")
    if scale == 0.0:
        raise ValueError("all errors are zero; the recalibration scale is undefined")
    return scale


POWERS = np.round(np.arange(0.1, 1.5001, 0.02), 2)  # the exponents fit_power tries
IDENTITY = (1.0, 1.0, math.inf)  # the (scale, power, knee) map of uncalibrated σ


def fit_power(err: Any, sigma: Any) -> tuple[float, float]:
    """``(a, b)`` of ``sigma -> a sigma^b`` with the least Gaussian NLL on validation data
    (``b`` on the grid :data:`POWERS`, 0.1-1.5 in steps of 0.02, so σ keeps its ranking;
    ``a`` in closed form for each ``b``). ``a`` is in the unit of ``err`` to the power
    ``1 - b``."""
    e, s = _check(err, sigma)
    log_s, best = np.log(s), None
    for b in POWERS:
        s_b = np.exp(b * log_s)
        a = math.sqrt(float(np.mean((e / s_b) ** 2)))
        if a == 0.0:
            raise ValueError("all errors are zero; the recalibration is undefined")
        nll = float(np.mean(np.log(a * s_b))) + 0.5
        if best is None or nll < best[0]:
            best = (nll, a, float(b))
    return best[1], best[2]


def sigma_map(entry: dict | float | None) -> tuple[float, float, float]:
    """``(scale, power, knee)`` of a calibration entry (:func:`fit_targets`); a float is a
    plain scale, ``None`` the identity ``(1, 1, inf)``."""
    if entry is None:
        return IDENTITY
    if not isinstance(entry, dict):
        entry = {"scale": entry}
    m = (float(entry["scale"]), float(entry.get("power", 1.0)), float(entry.get("knee", math.inf)))
    if not (math.isfinite(m[0]) and m[0] > 0 and math.isfinite(m[1]) and m[1] > 0 and m[2] > 0):
        raise ValueError(f"a σ calibration needs scale > 0, power > 0 and knee > 0, got "
                         f"scale {m[0]}, power {m[1]}, knee {m[2]}")
    return m


def map_entry(m: Any) -> dict[str, float]:
    """The JSON entry ``{"scale", "power"[, "knee"]}`` of a map (inverse of :func:`sigma_map`;
    an infinite knee is left out)."""
    return {k: float(v) for k, v in zip(("scale", "power", "knee"), m) if math.isfinite(v)}


def apply_map(sigma: Any, m: Any, xp: Any = np, components: int = 1) -> Any:
    """Calibrated σ ``a min(σ, k)^b max(σ / k, 1)`` of raw ``sigma`` under the map
    ``m = (a, b, k)`` (:func:`sigma_map`, fitted per component); ``components``: ``sigma``
    is the root of a variance summed over that many components (a per-atom force σ: 3),
    mapped as ``√n`` times the map of its per-component RMS. ``xp``: ``numpy`` or
    ``jax.numpy`` (the MD detector applies it on the device)."""
    a, b, k = m[0], m[1], m[2]
    r = math.sqrt(components)
    s = sigma / r
    return r * a * xp.minimum(s, k) ** b * xp.maximum(s / k, 1.0)


def describe(entry: dict | float | None, unit: str = "") -> str:
    """A calibration entry in words: ``x2`` (a scale) or ``0.3 σ^0.40, linear beyond σ 0.2``."""
    a, b, k = sigma_map(entry)
    if b == 1.0:
        return f"x{a:.3g}"
    return f"{a:.3g} σ^{b:.2f}, linear beyond σ {k:.3g}{' ' + unit if unit else ''}"


def recalibrate(sigma: Any, scale: float) -> np.ndarray:
    """``scale * sigma`` (apply a factor from :func:`fit_scale` at prediction time)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"recalibration scale must be positive and finite, got {scale}")
    return scale * np.asarray(sigma)


def metrics(err: Any, sigma: Any) -> dict[str, float]:
    """All calibration metrics at once: ``mae``, ``rmse``, ``mean_sigma``, ``nll``, ``spearman``,
    ``miscalibration_area``, ``coverage_68``, ``coverage_95`` (error-unit quantities in the
    unit of ``err``)."""
    e, s = _check(err, sigma)
    return {
        "n": int(e.size),
        "mae": float(np.mean(np.abs(e))),
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mean_sigma": float(np.mean(s)),
        "nll": gaussian_nll(e, s),
        "spearman": spearman(e, s) if e.size > 1 else float("nan"),
        "miscalibration_area": miscalibration_area(e, s),
        "coverage_68": coverage(e, s, 0.6827),
        "coverage_95": coverage(e, s, 0.95),
    }


MIN_STRUCTURES = 20  # fewer validation structures give a recalibration with a warning


METHODS = ("power", "nll", "median")


def fit_targets(errors: dict[str, tuple[Any, Any]], n_structures: int, method: str = "power",
                min_structures: int = MIN_STRUCTURES) -> dict[str, dict]:
    """Per-target recalibration: ``errors`` maps a target (``"energy"`` eV, ``"forces"``
    eV/Å components) to ``(err, sigma)`` on validation data of ``n_structures`` structures.
    ``method``: ``"power"`` (default, :func:`fit_power` with the knee at the largest
    validation σ) or a single scale (``"nll"``, ``"median"``: :func:`fit_scale`). Returns
    ``{target: {"scale", "power", "knee", "method", "n", "before", "after", "ranks"}}``
    (``before``/``after``: :func:`metrics` with raw and calibrated σ; ``n``: structures;
    ``ranks``: whether σ ranks the validation errors at all, Spearman > 0; when it does not,
    a warning says that the calibrated σ is a typical error size, not a ranking). Fewer
    than ``min_structures`` structures give a warning naming the number.

    The default was chosen on validation folds of three committees (ethanol and alanine
    dipeptide at 600 K, ``benchmarks/calibration_forms.py``): for forces the power law
    beat both single scales in 3/3."""
    if method not in METHODS:
        raise ValueError(f"unknown recalibration method {method!r}; use one of {METHODS}")
    if n_structures < min_structures:
        warnings.warn(f"σ recalibration fitted on {n_structures} validation structures "
                      f"(fewer than {min_structures}): the scale is uncertain", stacklevel=2)
    out = {}
    for target, (err, sigma) in errors.items():
        e, s = _check(err, sigma)
        if method == "power":
            (a, b), knee = fit_power(e, s), float(np.max(s))
        else:
            a, b, knee = fit_scale(e, s, method), 1.0, math.inf
        entry = map_entry((a, b, knee))
        before = _finite(metrics(e, s))
        rho = before["spearman"]
        ranks = rho is not None and rho > 0
        if not ranks:
            warnings.warn(f"committee σ of {target} does not rank the validation errors "
                          f"(Spearman {'undefined' if rho is None else f'{rho:+.2f}'} over "
                          f"{e.size} values): the calibrated σ gives the typical error size, "
                          f"not which structures are worse; do not use it to rank or select "
                          f"them", stacklevel=2)
        out[target] = {**entry, "method": method, "n": int(n_structures), "before": before,
                       "after": _finite(metrics(e, apply_map(s, sigma_map(entry)))),
                       "ranks": ranks}
    return out


def committee_errors(model: Any, params: Any, records: Sequence[Any],
                     batch_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{target: (err, sigma)}`` of committee ``params`` on labelled ``records``
    (:class:`jaxmat.core.graph.Record`): ``"energy"`` per structure (eV) and ``"forces"``
    per component (eV/Å), where every record carries the label; raw committee σ."""
    from jaxmat.core.predict import predict

    pred = predict(model, params, records, batch_size=batch_size)
    out = {}
    if "energy_var" in pred and all("energy" in r.targets for r in records):
        true = np.array([r.targets["energy"] for r in records], dtype=np.float64)
        out["energy"] = (np.asarray(pred["energy"]) - true, np.sqrt(pred["energy_var"]))
    if "forces_var" in pred and all("forces" in r.node_targets for r in records):
        err = np.concatenate([np.ravel(p - r.node_targets["forces"])
                              for p, r in zip(pred["forces"], records)])
        out["forces"] = (err, np.sqrt(np.concatenate([np.ravel(v) for v in pred["forces_var"]])))
    return out


def fit_committee(model: Any, params: Any, records: Sequence[Any], method: str = "power",
                  batch_size: int = 32) -> dict[str, dict]:
    """The ``calibration`` of a committee bundle: :func:`fit_targets` on the errors and σ
    of committee ``params`` on labelled (validation) ``records``."""
    errs = committee_errors(model, params, records, batch_size)
    if not errs:
        raise ValueError("σ recalibration needs committee params (a leading member axis) "
                         "and records labelled with energies or forces")
    return fit_targets(errs, len(records), method)


def _finite(m: dict) -> dict:
    """Metrics with NaN (e.g. Spearman of constant σ) as None, so JSON can hold them."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in m.items()}


def _map_var(var: Any, m: Any, components: int) -> np.ndarray:
    return apply_map(np.sqrt(np.asarray(var)), m, components=components) ** 2


def scale_outputs(outputs: dict, calibration: dict | None) -> dict:
    """Committee outputs of :func:`jaxmat.core.predict.predict` with the variances
    (``energy_var``, ``forces_var`` per component, ...) mapped to calibrated ones by the
    bundle's ``calibration`` of their target (:func:`apply_map` on σ); others unchanged
    (``None``: as given); ``forces_var_atom`` (xyz-summed) maps its per-component RMS."""
    if not calibration:
        return outputs
    out = dict(outputs)
    for target, entry in calibration.items():
        m = sigma_map(entry)
        for k, v in outputs.items():
            if k == f"{target}_var" or k.startswith(f"{target}_var_"):
                n = 3 if k.endswith("_atom") else 1  # xyz-summed: 3 components
                out[k] = ([_map_var(x, m, n) for x in v] if isinstance(v, list)
                          else _map_var(v, m, n))
    return out


# --------------------------------------------------------------------------- plots
def _axes(ax: Any):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(4, 4))[1]


def plot_calibration(err: Any, sigma: Any, ax: Any = None, label: str | None = None):
    """Calibration curve: observed vs expected fraction inside the central interval."""
    ax = _axes(ax)
    expected, observed = calibration_curve(err, sigma)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.plot(expected, observed, label=label or
            f"area {miscalibration_area(err, sigma):.3f}")
    ax.fill_between(expected, expected, observed, alpha=0.2)
    ax.set(xlabel="expected fraction", ylabel="observed fraction", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return ax


def plot_error_vs_sigma(err: Any, sigma: Any, ax: Any = None, unit: str = "eV/Å"):
    """|error| against predicted sigma (log-log) with the 68 % / 95 % Gaussian quantile lines."""
    ax = _axes(ax)
    e, s = _check(err, sigma)
    ax.loglog(s, np.abs(e) + 1e-12, ".", ms=2, alpha=0.5)
    grid = np.geomspace(s.min(), s.max(), 50)
    for p, style in ((0.6827, "k--"), (0.95, "k:")):
        ax.plot(grid, _z_of(p) * grid, style, lw=1, label=f"{p:.0%} interval")
    ax.set(xlabel=f"σ ({unit})", ylabel=f"|error| ({unit})",
           title=f"Spearman ρ = {spearman(e, s):.2f}")
    ax.legend(loc="lower right")
    return ax


def plot_parity(target: Any, prediction: Any, sigma: Any, ax: Any = None, unit: str = "eV/Å",
                max_points: int = 2000):
    """Parity plot of prediction vs target with ±sigma error bars."""
    ax = _axes(ax)
    t = np.asarray(target, dtype=np.float64).ravel()
    p = np.asarray(prediction, dtype=np.float64).ravel()
    _, s = _check(p - t, sigma)
    if len(t) > max_points:
        keep = np.random.default_rng(0).choice(len(t), max_points, replace=False)
        t, p, s = t[keep], p[keep], s[keep]
    ax.errorbar(t, p, yerr=s, fmt=".", ms=2, lw=0.5, alpha=0.6)
    lim = [min(t.min(), p.min()), max(t.max(), p.max())]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xlabel=f"target ({unit})", ylabel=f"prediction ({unit})")
    return ax


def plot_all(err: Sequence[float], sigma: Sequence[float], target: Any, prediction: Any,
             path: str | None = None, unit: str = "eV/Å"):
    """The three plots side by side; saved to ``path`` when given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    plot_calibration(err, sigma, axes[0])
    plot_error_vs_sigma(err, sigma, axes[1], unit)
    plot_parity(target, prediction, sigma, axes[2], unit)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
