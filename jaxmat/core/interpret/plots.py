"""Plots of interpretation outputs (matplotlib, imported on first use)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def plot_composition_map(composition: Any, values: Any, elements: Sequence[str],
                         axes: Sequence[str], ax: Any = None, label: str = "", title: str = "",
                         cmap: str = "RdBu_r", s: float = 12.0):
    """Scatter map of a per-sample quantity (e.g. ∂P/∂Gd per at.%) over a composition slice:
    two element names → pseudo-binary (at.% of each on x/y); three → ternary coordinates
    of the fractions renormalised over those three. Diverging colours centred at 0."""
    from matplotlib.colors import TwoSlopeNorm

    X = np.asarray(composition, np.float64)
    v = np.asarray(values, np.float64)
    idx = [list(elements).index(e) for e in axes]
    ax = _axes(ax, (4.5, 4))
    lim = np.nanmax(np.abs(v)) or 1.0
    norm = TwoSlopeNorm(0.0, -lim, lim)
    if len(idx) == 2:
        sc = ax.scatter(100 * X[:, idx[0]], 100 * X[:, idx[1]], c=v, cmap=cmap, norm=norm, s=s)
        ax.set(xlabel=f"{axes[0]} (at.%)", ylabel=f"{axes[1]} (at.%)")
    elif len(idx) == 3:
        sub = X[:, idx]
        tot = sub.sum(1)
        keep = tot > 0
        f = sub[keep] / tot[keep, None]
        px, py = f[:, 1] + 0.5 * f[:, 2], np.sqrt(3) / 2 * f[:, 2]
        ax.plot([0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0], "k-", lw=0.8)
        for (tx, ty), name in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], axes):
            ax.annotate(name, (tx, ty), ha="center", va="top" if ty == 0 else "bottom",
                        xytext=(0, -4 if ty == 0 else 4), textcoords="offset points")
        sc = ax.scatter(px, py, c=v[keep], cmap=cmap, norm=norm, s=s)
        ax.set(aspect="equal", ylim=(-0.08, np.sqrt(3) / 2 + 0.1))
        ax.axis("off")
    else:
        raise ValueError(f"axes must name 2 (pseudo-binary) or 3 (ternary) elements, got {axes}")
    ax.figure.colorbar(sc, ax=ax, label=label)
    ax.set_title(title)
    return ax


def plot_spectrum_saliency(raman_shift: Any, saliency: Any, spread: Any = None,
                           spectrum: Any = None, ax: Any = None, label: str = "∂P/∂I",
                           title: str = ""):
    """Saliency along the Raman axis (cm⁻¹) with an optional ±``spread`` band and the
    (mean) spectrum on a second axis."""
    nu = np.asarray(raman_shift)
    sal = np.asarray(saliency)
    ax = _axes(ax, (7, 3))
    ax.plot(nu, sal, color="C3", lw=1.0, label=label)
    if spread is not None:
        sp = np.asarray(spread)
        ax.fill_between(nu, sal - sp, sal + sp, color="C3", alpha=0.25, lw=0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="Raman shift (cm⁻¹)", ylabel=label)
    if spectrum is not None:
        ax2 = ax.twinx()
        ax2.plot(nu, np.asarray(spectrum), color="0.5", lw=0.8)
        ax2.set_ylabel("normalised intensity", color="0.5")
    ax.set_title(title)
    return ax


def plot_correlation(matrix: Any, names: Sequence[str], ax: Any = None, title: str = "",
                     annotate: bool = True):
    """Heat map of a correlation matrix (−1 … 1) with labelled rows and columns."""
    m = np.asarray(matrix)
    if m.shape != (len(names), len(names)):
        raise ValueError(f"matrix {m.shape} does not match {len(names)} names")
    ax = _axes(ax, (0.5 * len(names) + 2, 0.5 * len(names) + 1.5))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    if annotate:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=6)
    ax.figure.colorbar(im, ax=ax, label="Pearson r")
    ax.set_title(title)
    return ax


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    """``ax``, or the axes of a new figure of ``figsize`` (inches)."""
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1] if ax is None else ax
