"""Spectral metrics and plots (numpy; matplotlib only for the plots).

Spectra are arrays on a common energy grid (eV).  A *significant* peak is a local maximum
whose topographic prominence is at least :data:`SIGNIFICANT_PROMINENCE` (10 %) of the
spectrum's maximum; this one definition is used by every XANES metric, table and combiner.
Significant peaks of the reference and of the prediction are matched one to one, nearest
first (Carbone et al., PRL 124, 156401, 2020), and both sides are always reported:

* **precision** — fraction of predicted peaks with a reference partner within
  :data:`PEAK_TOL_EV` (1 eV): are the predicted peaks real?
* **recall** — fraction of reference peaks with a predicted partner within 1 eV: are the
  real peaks reproduced?  (Smoothing, e.g. averaging a committee, raises precision and
  lowers recall.)
* **peak-height error** — mean |h_pred - h_ref| / max(reference) over the matched pairs.

:func:`peak_metrics` gives all three with bootstrap intervals over spectra.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: a *significant* peak: prominence >= this fraction of the spectrum's maximum (one
#: definition for every XANES metric, table and combiner)
SIGNIFICANT_PROMINENCE = 0.1
#: peaks closer than this (eV) count as the same peak
PEAK_TOL_EV = 1.0


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"spectra of different shapes {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("empty spectra")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("non-finite spectrum values")
    return y_true, y_pred


def prominences(y: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Topographic prominence of each peak index: height above the higher of the two
    minima reached before meeting a higher point (or the grid end) on either side."""
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(len(peaks))
    for k, p in enumerate(peaks):
        left = y[:p][::-1]
        stop = np.flatnonzero(left > y[p])
        lmin = left[: stop[0]].min() if len(stop) else (left.min() if len(left) else y[p])
        right = y[p + 1:]
        stop = np.flatnonzero(right > y[p])
        rmin = right[: stop[0]].min() if len(stop) else (right.min() if len(right) else y[p])
        out[k] = y[p] - max(lmin, rmin)
    return out


def find_peaks(grid: np.ndarray, y: np.ndarray, prominence: float = SIGNIFICANT_PROMINENCE
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prominent peaks of one spectrum: ``(energies eV, heights, prominences)``.

    Interior local maxima (first point of a plateau) with prominence >=
    ``prominence * max(y)``; an all-zero spectrum has no peaks.
    """
    grid = np.asarray(grid, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or grid.shape != y.shape:
        raise ValueError(f"grid {grid.shape} and spectrum {y.shape} must be equal 1-D shapes")
    if not np.all(np.isfinite(y)):
        raise ValueError("non-finite spectrum values")
    top = y.max() if y.size else 0.0
    if y.size < 3 or top <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    up = y[1:-1] > y[:-2]
    # plateaus: a point is a peak if it rises from the left and the next different value
    # to the right is lower
    idx = []
    for i in np.flatnonzero(up) + 1:
        j = i
        while j + 1 < len(y) and y[j + 1] == y[i]:
            j += 1
        if j + 1 < len(y) and y[j + 1] < y[i]:
            idx.append(i)
    idx = np.array(idx, dtype=int)
    if idx.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    prom = prominences(y, idx)
    keep = prom >= prominence * top
    return grid[idx[keep]], y[idx[keep]], prom[keep]


def match_peaks(ref: np.ndarray, pred: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one matching of peak energies, nearest pairs first:
    ``[(i_ref, j_pred, |distance| eV), ...]`` (unmatched peaks left out)."""
    ref = np.asarray(ref, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if ref.size == 0 or pred.size == 0:
        return []
    d = np.abs(ref[:, None] - pred[None, :])
    pairs, used_r, used_p = [], set(), set()
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(pred))
        if i in used_r or j in used_p:
            continue
        pairs.append((i, j, float(d[i, j])))
        used_r.add(i)
        used_p.add(j)
        if len(used_r) == len(ref) or len(used_p) == len(pred):
            break
    return pairs


def peak_scores(grid: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                prominence: float = SIGNIFICANT_PROMINENCE, pred_prominence: float | None = None,
                tol: float = PEAK_TOL_EV) -> dict[str, Any]:
    """Peak comparison of one spectrum pair.

    Prominent peaks of the reference (prominence >= ``prominence`` x its max) and of the
    prediction (>= ``pred_prominence``, default ``prominence``, x its max) are matched one
    to one, nearest first.  Returns ``n_ref``, ``n_pred``, ``n_within`` (pairs closer than
    ``tol`` eV), ``shifts`` (eV, signed pred - ref, of those pairs) and ``height_errors``
    (|h_pred - h_ref| / max(y_true), same pairs).  ``n_within / n_ref`` is the fraction of
    reference peaks reproduced, ``n_within / n_pred`` the fraction of predicted peaks that
    are real: a wiggly prediction scores well on the first only.  ``first_within``: whether
    the lowest-energy reference peak is among those pairs (None without reference peaks).
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    pp = prominence if pred_prominence is None else pred_prominence
    e_ref, h_ref, _ = find_peaks(grid, y_true, prominence)
    e_pred, h_pred, _ = find_peaks(grid, y_pred, pp)
    top = max(float(y_true.max()), 1e-300)
    shifts, herr = [], []
    for i, j, dist in match_peaks(e_ref, e_pred):
        if dist <= tol:
            shifts.append(e_pred[j] - e_ref[i])
            herr.append(abs(h_pred[j] - h_ref[i]) / top)
    first = None  # the lowest-energy reference peak (the edge's first feature) matched?
    if len(e_ref):
        first = any(i == 0 and dist <= tol for i, _, dist in match_peaks(e_ref, e_pred))
    return {"n_ref": len(e_ref), "n_pred": len(e_pred), "n_within": len(shifts),
            "shifts": np.array(shifts), "height_errors": np.array(herr),
            "first_within": first}


def spectral_mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean absolute error over the grid, per spectrum (last axis = grid)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    return np.mean(np.abs(y_pred - y_true), axis=-1)


def cosine_similarity(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Cosine of the angle between spectra (last axis = grid); 0 if either is all zero."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    num = np.sum(y_true * y_pred, axis=-1)
    den = np.linalg.norm(y_true, axis=-1) * np.linalg.norm(y_pred, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _counts(grid: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, prominence: float,
            tol: float) -> tuple[np.ndarray, list, list, list]:
    """Per-spectrum ``(n_ref, n_pred, n_within, height-error sum)`` rows, shifts, height
    errors and first-peak flags."""
    rows, shifts, herr, first = [], [], [], []
    for t, p in zip(y_true, y_pred):
        s = peak_scores(grid, t, p, prominence, tol=tol)
        if s["first_within"] is not None:
            first.append(s["first_within"])
        rows.append((s["n_ref"], s["n_pred"], s["n_within"], float(np.sum(s["height_errors"]))))
        shifts.append(s["shifts"])
        herr.append(s["height_errors"])
    return np.array(rows, dtype=np.float64).reshape(-1, 4), shifts, herr, first


def _ratios(c: np.ndarray) -> np.ndarray:
    """(precision, recall, height error) of summed counts ``c`` (..., 4)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([c[..., 2] / c[..., 1], c[..., 2] / c[..., 0], c[..., 3] / c[..., 2]], -1)


def peak_metrics(grid: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                 prominence: float = SIGNIFICANT_PROMINENCE, tol: float = PEAK_TOL_EV,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Significant-peak precision, recall and height error over spectra (M, P), peaks
    pooled over spectra, each with a percentile bootstrap interval (``level``; spectra
    resampled with replacement ``n_boot`` times, ``seed``): ``precision``,
    ``precision_ci`` (lo, hi), ``recall``, ``recall_ci``, ``height_error``,
    ``height_error_ci`` (|Δh| / max(reference) per matched pair), ``n_peaks``,
    ``n_pred_peaks``, ``n_matched``, ``n_spectra``.  NaN where a count is zero."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.ndim != 2:
        raise ValueError(f"expected (n_spectra, n_grid) arrays, got {y_true.shape}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    c, _, _, _ = _counts(grid, y_true, y_pred, prominence, tol)
    point = _ratios(c.sum(0))
    idx = np.random.default_rng(seed).integers(0, len(c), size=(n_boot, len(c)))
    boot = _ratios(c[idx].sum(1))
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(boot, a, axis=0), np.nanquantile(boot, 1 - a, axis=0)
    out = {"n_spectra": len(c), "n_peaks": int(c[:, 0].sum()), "n_pred_peaks": int(c[:, 1].sum()),
           "n_matched": int(c[:, 2].sum()), "tol_ev": tol, "prominence": prominence,
           "n_boot": n_boot, "level": level}
    for k, name in enumerate(("precision", "recall", "height_error")):
        out[name] = float(point[k])
        out[f"{name}_ci"] = (float(lo[k]), float(hi[k]))
    return out


def format_peaks(m: dict[str, Any]) -> str:
    """``P 90.1 % [88.0, 92.0] / R 70.2 % [..] / Δh 0.120`` for a :func:`peak_metrics` dict."""
    p, r = m["precision_ci"], m["recall_ci"]
    return (f"P {100 * m['precision']:.1f} % [{100 * p[0]:.1f}, {100 * p[1]:.1f}] / "
            f"R {100 * m['recall']:.1f} % [{100 * r[0]:.1f}, {100 * r[1]:.1f}] / "
            f"Δh {m['height_error']:.3f}")


def evaluate_spectra(grid: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                     prominence: float = SIGNIFICANT_PROMINENCE, tol: float = PEAK_TOL_EV,
                     n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """All metrics over many spectra (M, P), significant peaks pooled over spectra:
    ``precision`` (= ``pred_peaks_within_tol``: fraction of predicted peaks with a
    reference partner within ``tol`` eV) and ``recall`` (= ``peaks_within_tol``: fraction
    of reference peaks with a predicted partner), ``first_peak_within_tol`` (fraction of
    spectra whose lowest-energy significant peak has a partner within ``tol``), mean |shift|
    (eV) and height error of the matched pairs, mean/median spectral MAE and cosine
    similarity; per-spectrum ``mae`` and ``cosine`` arrays for ranking.  ``n_boot > 0``
    adds the bootstrap intervals of :func:`peak_metrics` (``precision_ci``, ...)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.ndim != 2:
        raise ValueError(f"expected (n_spectra, n_grid) arrays, got {y_true.shape}")
    c, shifts, herr, first = _counts(grid, y_true, y_pred, prominence, tol)
    n_ref, n_pred, n_within = (int(x) for x in c[:, :3].sum(0))
    shifts = np.concatenate(shifts) if shifts else np.zeros(0)
    herr = np.concatenate(herr) if herr else np.zeros(0)
    mae = spectral_mae(y_true, y_pred)
    cos = cosine_similarity(y_true, y_pred)
    precision = float(n_within / n_pred) if n_pred else float("nan")
    recall = float(n_within / n_ref) if n_ref else float("nan")
    out = {
        "n_spectra": len(y_true),
        "n_peaks": n_ref,
        "n_pred_peaks": n_pred,
        "precision": precision,
        "recall": recall,
        "peaks_within_tol": recall,
        "pred_peaks_within_tol": precision,
        "first_peak_within_tol": float(np.mean(first)) if first else float("nan"),
        "tol_ev": tol,
        "mean_abs_shift_ev": float(np.mean(np.abs(shifts))) if shifts.size else float("nan"),
        "peak_height_error": float(np.mean(herr)) if herr.size else float("nan"),
        "mae": float(mae.mean()),
        "median_mae": float(np.median(mae)),
        "cosine": float(cos.mean()),
        "median_cosine": float(np.median(cos)),
        "per_spectrum_mae": mae,
        "per_spectrum_cosine": cos,
    }
    if n_boot:
        m = peak_metrics(grid, y_true, y_pred, prominence, tol, n_boot=n_boot, seed=seed)
        out.update({k: m[k] for k in ("precision_ci", "recall_ci", "height_error_ci")})
    return out


def rank_examples(score: np.ndarray, higher_is_better: bool = True) -> dict[str, int]:
    """Indices of the best, median and worst spectra by ``score``."""
    score = np.asarray(score)
    if score.size == 0:
        raise ValueError("no scores to rank")
    order = np.argsort(-score if higher_is_better else score, kind="stable")
    return {"best": int(order[0]), "median": int(order[len(order) // 2]),
            "worst": int(order[-1])}


def plot_examples(grid: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                  labels: Sequence[str] | None = None, score: np.ndarray | None = None,
                  title: str = "", prominence: float = SIGNIFICANT_PROMINENCE, axes: Any = None):
    """Predicted vs computed spectra of the best, median and worst molecules (by cosine
    similarity unless ``score`` is given, higher = better); prominent reference peaks
    marked.  Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    y_true, y_pred = _check_pair(y_true, y_pred)
    score = cosine_similarity(y_true, y_pred) if score is None else np.asarray(score)
    picks = rank_examples(score)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharex=True)
    else:
        fig = np.ravel(axes)[0].figure
    for ax, (what, k) in zip(np.ravel(axes), picks.items()):
        ax.plot(grid, y_true[k], color="k", lw=1.5, label="computed")
        ax.plot(grid, y_pred[k], color="C3", lw=1.2, ls="--", label="predicted")
        e, h, _ = find_peaks(grid, y_true[k], prominence)
        ax.plot(e, h, "kv", ms=4)
        name = labels[k] if labels is not None else f"#{k}"
        ax.set_title(f"{what}: {name}\ncos {score[k]:.3f}", fontsize=9)
        ax.set_xlabel("photon energy (eV)")
    np.ravel(axes)[0].set_ylabel("intensity")
    np.ravel(axes)[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
