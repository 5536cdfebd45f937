"""Spectral metrics and plots (numpy; matplotlib only for the plots).

Spectra are arrays on a common energy grid (eV).  A *prominent* peak is a local maximum
whose topographic prominence is at least ``prominence`` times the spectrum's maximum.
Peak scores follow Carbone et al. (PRL 124, 156401, 2020): every prominent peak of the
reference spectrum is matched one-to-one (nearest first) to a peak of the prediction; the
headline number is the fraction of reference peaks with a partner within ``tol`` eV.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


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


def find_peaks(grid: np.ndarray, y: np.ndarray, prominence: float = 0.1
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
                prominence: float = 0.1, pred_prominence: float | None = None,
                tol: float = 1.0) -> dict[str, Any]:
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


def evaluate_spectra(grid: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                     prominence: float = 0.1, tol: float = 1.0) -> dict[str, Any]:
    """All metrics over many spectra (M, P), peaks pooled over spectra:
    ``peaks_within_tol`` (fraction of prominent reference peaks with a predicted partner
    within ``tol`` eV), ``pred_peaks_within_tol`` (fraction of prominent predicted peaks with
    a reference partner), ``first_peak_within_tol`` (fraction of spectra whose lowest-energy
    prominent peak has a partner within ``tol``), mean |shift| (eV) and height error of the matched pairs,
    mean/median spectral MAE and cosine similarity; per-spectrum ``mae`` and ``cosine``
    arrays for ranking."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    if y_true.ndim != 2:
        raise ValueError(f"expected (n_spectra, n_grid) arrays, got {y_true.shape}")
    n_ref = n_pred = n_within = 0
    shifts, herr, first = [], [], []
    for t, p in zip(y_true, y_pred):
        s = peak_scores(grid, t, p, prominence, tol=tol)
        if s["first_within"] is not None:
            first.append(s["first_within"])
        n_ref += s["n_ref"]
        n_pred += s["n_pred"]
        n_within += s["n_within"]
        shifts.append(s["shifts"])
        herr.append(s["height_errors"])
    shifts = np.concatenate(shifts) if shifts else np.zeros(0)
    herr = np.concatenate(herr) if herr else np.zeros(0)
    mae = spectral_mae(y_true, y_pred)
    cos = cosine_similarity(y_true, y_pred)
    return {
        "n_spectra": len(y_true),
        "n_peaks": int(n_ref),
        "n_pred_peaks": int(n_pred),
        "peaks_within_tol": float(n_within / n_ref) if n_ref else float("nan"),
        "pred_peaks_within_tol": float(n_within / n_pred) if n_pred else float("nan"),
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
                  title: str = "", prominence: float = 0.1, axes: Any = None):
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
