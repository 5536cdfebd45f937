"""Stick spectra -> broadened K-edge spectra on fixed photon-energy grids.

The Gaussian sum is :func:`jaxmat.models.spectral.broaden_sticks`, the one the
peak-preserving model head broadens its predicted transitions with.

Energies in eV; a stick is ``(energy eV, oscillator strength)``; spectra are oscillator
strength per eV (eV⁻¹).  The Gaussian full width grows from ``fwhm_below`` at and below
the ionisation edge to ``fwhm_above`` ``ramp`` eV above it (lifetime and continuum
broadening widen above the edge).
"""
from __future__ import annotations

import dataclasses

import numpy as np

#: fixed photon-energy grids of the shipped dataset (eV): (start, stop, points)
GRIDS = {"O": (526.0, 552.0, 261), "N": (395.0, 425.0, 301)}
#: experimental references per element: (SMILES, 1s -> pi* peak eV, 1s ionisation energy
#: eV, label).  The peak calibrates one shift of all transition energies, the ionisation
#: energy a second shift of the edge that only sets where the broadening widens.
REFERENCES = {
    "O": ("CC(C)=O", 531.4, 537.7, "acetone O1s -> pi*"),
    "N": ("c1ccncc1", 398.8, 404.9, "pyridine N1s -> pi*"),
}


def grid(element: str) -> np.ndarray:
    """The shipped energy grid (eV) of ``element`` (``"O"`` or ``"N"``)."""
    if element not in GRIDS:
        raise ValueError(f"no XANES grid for element {element!r}; choose from {sorted(GRIDS)}")
    a, b, n = GRIDS[element]
    return np.linspace(a, b, n)


@dataclasses.dataclass(frozen=True)
class Broadening:
    """Energy-dependent Gaussian broadening (full widths at half maximum, eV)."""

    fwhm_below: float = 0.6
    fwhm_above: float = 4.0
    ramp: float = 12.0

    def fwhm(self, energy: np.ndarray, edge: float) -> np.ndarray:
        from jaxmat.models.spectral import broadening_fwhm

        return broadening_fwhm(np.asarray(energy, np.float64), np.asarray(edge, np.float64),
                               self.fwhm_below, self.fwhm_above, self.ramp)


def broaden(energies: np.ndarray, strengths: np.ndarray, energy_grid: np.ndarray,
            edge: float, broadening: Broadening = Broadening()) -> np.ndarray:
    """Sum of Gaussians (area = oscillator strength) on ``energy_grid`` (eV) -> eV⁻¹."""
    e = np.asarray(energies, dtype=np.float64)
    f = np.asarray(strengths, dtype=np.float64)
    if e.shape != f.shape or e.ndim != 1:
        raise ValueError(f"energies {e.shape} and strengths {f.shape} must be equal 1-D shapes")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(f))):
        raise ValueError("non-finite stick energies or strengths")
    from jaxmat.models.spectral import broaden_sticks

    return broaden_sticks(e, f, np.asarray(energy_grid, dtype=np.float64),
                          broadening.fwhm(e, edge))


def first_strong(energies: np.ndarray, strengths: np.ndarray, window: float = 10.0,
                 fraction: float = 0.25) -> float:
    """Energy (eV) of the lowest stick with strength >= ``fraction`` of the strongest stick
    within ``window`` eV of the lowest one: the 1s -> pi* peak of the reference molecules."""
    e = np.asarray(energies)
    f = np.asarray(strengths)
    if e.size == 0:
        raise ValueError("no sticks")
    order = np.argsort(e)
    e, f = e[order], f[order]
    near = e <= e[0] + window
    fmax = f[near].max()
    return float(e[np.flatnonzero(near & (f >= fraction * fmax))[0]])
