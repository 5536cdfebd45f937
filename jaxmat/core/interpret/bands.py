"""Spectral bands: peaks of a (mean) spectrum and a spectrum saliency read per band as shift
vs width (cm⁻¹)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


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
    peaks = np.sort(peaks[np.argsort(props["prominences"])[::-1][:max_bands]])
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
        d = nu[None] - nu[idx[np.argmax(I[:, idx], axis=1)]][:, None]  # from per-sample centres
        win = np.abs(d) <= window * w
        # output change per sample under the shift operator and the stretch about the centre
        d_shift, d_width = (np.einsum("mnl,nl->mn", S, np.where(win, op, 0.0)).mean(1)
                            for op in (-dI, -d / w * dI))
        a = np.abs(S.mean(0))
        core = np.sum(np.where(np.abs(d) <= 0.5 * w, a, 0.0))
        out.append({"centre": c0, "fwhm": w, "d_shift": float(d_shift.mean()),
                    "d_shift_std": float(d_shift.std()), "d_width": float(d_width.mean()),
                    "d_width_std": float(d_width.std()),
                    "centre_share": float(core / max(np.sum(np.where(win, a, 0.0)), 1e-30))})
    return out


def band_table(rows: Sequence[dict], unit: str = "mW/cm²") -> str:
    """Plain-text table of :func:`band_attribution` rows."""
    return "\n".join([f"{'band (cm⁻¹)':>12} {'FWHM':>6} {'dP/dshift':>18} {'dP/dwidth':>18} "
                      f"{'centre':>7}   ({unit} per cm⁻¹)"] + [
        f"{r['centre']:12.0f} {r['fwhm']:6.1f} {r['d_shift']:+10.4f} ± {r['d_shift_std']:.4f} "
        f"{r['d_width']:+10.4f} ± {r['d_width_std']:.4f} {r['centre_share']:6.0%}" for r in rows])
