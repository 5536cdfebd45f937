"""Composition + Raman tables (photoanode libraries, Umehara et al., npj Comput. Mater. 5:34, 2019).

The study's CSV has one row per sample: ``Sample``, the metal fractions
``Bi, V, W, Dy, Gd, Mo, Tb`` (summing to 1), 1015 Raman intensities whose column
headers are the Raman shifts (cm⁻¹, first 78.025) and ``P``, the photoelectrochemical
power (mW/cm²). The original file carries one extra line above the header; it is
detected and skipped. :func:`read_table` reads any CSV with a declared
composition / spectrum / target split.

Preprocessing as published: :func:`normalize_spectra` divides each spectrum by its
maximum in 750–850 cm⁻¹ (the V–O stretch band); :class:`Standardizer` maps P to zero
mean, unit variance and back.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import math
import os
from collections.abc import Sequence

import numpy as np

ELEMENTS = ("Bi", "V", "W", "Dy", "Gd", "Mo", "Tb")
N_RAMAN = 1015
RAMAN_START = 78.025  # cm⁻¹, first Raman column of the study's file
NORM_WINDOW = (750.0, 850.0)  # cm⁻¹


@dataclasses.dataclass
class SpectraTable:
    """Arrays of one library. ``composition`` (n, n_el) fractions, ``spectrum`` (n, n_shift)
    intensities (arbitrary units) on ``raman_shift`` (n_shift,) cm⁻¹, ``target`` (n,)
    (P in mW/cm² for photoanodes)."""

    sample: np.ndarray
    elements: tuple[str, ...]
    composition: np.ndarray
    raman_shift: np.ndarray
    spectrum: np.ndarray
    target: np.ndarray
    target_name: str = "P"

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> "SpectraTable":
        """Rows ``idx`` as a new table (arrays copied)."""
        idx = np.asarray(idx)
        return dataclasses.replace(self, sample=self.sample[idx], composition=self.composition[idx],
                                   spectrum=self.spectrum[idx], target=self.target[idx])

    def batch(self, target_scaler: "Standardizer | None" = None, normalize: bool = True) -> dict:
        """Plain dict batch: ``composition``, ``spectrum`` (normalised if asked), the target
        under ``target_name`` (standardised by ``target_scaler`` if given) and ``mask``."""
        spec = normalize_spectra(self.spectrum, self.raman_shift) if normalize else self.spectrum
        y = self.target if target_scaler is None else target_scaler.transform(self.target)
        return {"composition": self.composition.astype(np.float32),
                "spectrum": np.asarray(spec, np.float32),
                self.target_name: np.asarray(y, np.float32),
                "mask": np.ones(len(self), bool)}


# --------------------------------------------------------------------------- reading
def _open(path: str):
    """Text handle of a CSV file, gzip-compressed when the name ends in ``.gz``."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _read_rows(path: str, n: int) -> list[list[str]]:
    out = []
    with _open(path) as f:
        for k, row in enumerate(csv.reader(f)):
            if k >= n:
                break
            out.append([c.strip() for c in row])
    return out


def _find_header(path: str, required: Sequence[str], skip_rows: int | None) -> tuple[int, list[str]]:
    """Header row index and names: row ``skip_rows``, or (auto) row 0 unless only row 1
    holds every required column."""
    head = _read_rows(path, 2 if skip_rows is None else skip_rows + 1)
    if not head:
        raise ValueError(f"{path}: empty file (no header row)")
    if skip_rows is not None:
        if len(head) <= skip_rows:
            raise ValueError(f"{path}: fewer than {skip_rows + 1} rows")
        return skip_rows, head[skip_rows]
    if len(head) > 1 and not all(r in head[0] for r in required) and all(r in head[1] for r in required):
        return 1, head[1]
    return 0, head[0]


def _parse_float(name: str, header: list[str], col: int) -> float:
    try:
        return float(header[col])
    except ValueError:
        raise ValueError(f"{name}: spectrum column header {header[col]!r} is not a Raman shift "
                         "(cm⁻¹); pass raman_shift") from None


def read_table(
    path: str | os.PathLike,
    composition: Sequence[str],
    target: str,
    spectrum: Sequence[str] | None = None,
    sample: str | None = "Sample",
    skip_rows: int | None = None,
    sum_tol: float | None = 1e-2,
    raman_shift: Sequence[float] | None = None,
) -> SpectraTable:
    """Read a CSV with declared columns into a :class:`SpectraTable`.

    ``spectrum`` names the Raman columns; ``None`` takes every column whose header is a
    number (the Raman shift in cm⁻¹), in file order. The axis comes from those headers, or
    from ``raman_shift`` (cm⁻¹) when given; it must increase strictly.
    ``skip_rows=None`` skips up to one leading line until a header with all named columns
    is found; a name ending in ``.gz`` is read through gzip. Compositions must sum to 1
    within ``sum_tol`` (``None`` disables the check).
    Raises ``FileNotFoundError`` or ``ValueError`` naming the problem (missing columns,
    NaN or non-numeric values, non-monotonic axis, bad composition sums).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"CSV file not found: {path}")
    composition = list(composition)
    if not composition:
        raise ValueError("at least one composition column is required")
    required = composition + [target] + ([sample] if sample else [])
    hdr_row, header = _find_header(path, required, skip_rows)
    missing = [c for c in required + list(spectrum or []) if c not in header]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing} (header row {hdr_row + 1})")
    if len(set(header)) != len(header):
        dup = sorted({c for c in header if header.count(c) > 1})
        raise ValueError(f"{name}: duplicate column(s) {dup}")
    col = {c: k for k, c in enumerate(header)}
    if spectrum is None:
        spec_cols = []
        for k, h in enumerate(header):
            try:
                float(h)
            except ValueError:
                continue
            spec_cols.append(k)
    else:
        spec_cols = [col[c] for c in spectrum]
    if not spec_cols:
        raise ValueError(f"{name}: no spectrum columns (numeric Raman-shift headers) found")
    if raman_shift is None:
        shift = np.array([_parse_float(name, header, k) for k in spec_cols])
    else:
        shift = np.asarray(raman_shift, dtype=np.float64)
        if shift.shape != (len(spec_cols),):
            raise ValueError(f"{name}: raman_shift has {shift.size} values for {len(spec_cols)} "
                             "spectrum columns")
    steps = np.diff(shift)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0))
        raise ValueError(f"{name}: Raman axis not strictly increasing at column "
                         f"{header[spec_cols[k + 1]]!r} ({shift[k]} -> {shift[k + 1]} cm⁻¹)")

    num_cols = [col[c] for c in composition] + spec_cols + [col[target]]
    rows, names = [], []
    with _open(path) as f:
        reader = csv.reader(f)
        for k, row in enumerate(reader):
            if k <= hdr_row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{name}: row {k + 1} has {len(row)} fields, header has {len(header)}")
            try:
                rows.append([float(row[j]) if row[j].strip() else math.nan for j in num_cols])
            except ValueError:
                bad = next(j for j in num_cols if not _is_float(row[j]))
                raise ValueError(f"{name}: non-numeric value {row[bad]!r} in column {header[bad]!r}, "
                                 f"row {k + 1}") from None
            names.append(row[col[sample]].strip() if sample else str(len(names)))
    if not rows:
        raise ValueError(f"{name}: no data rows")
    a = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        r, c = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name}: NaN/missing value in column {header[num_cols[c]]!r}, "
                         f"row {r + hdr_row + 2} (sample {names[r]!r})")
    n_el = len(composition)
    comp, spec, y = a[:, :n_el], a[:, n_el:-1], a[:, -1]
    if np.any(comp < 0):
        r = int(np.argwhere(comp < 0)[0, 0])
        raise ValueError(f"{name}: negative composition fraction for sample {names[r]!r}")
    if sum_tol is not None:
        dev = np.abs(comp.sum(1) - 1.0)
        if np.any(dev > sum_tol):
            r = int(np.argmax(dev))
            raise ValueError(f"{name}: compositions must sum to 1 (tolerance {sum_tol}); sample "
                             f"{names[r]!r} sums to {comp[r].sum():.4f}")
    return SpectraTable(np.asarray(names), tuple(composition), comp.astype(np.float32), shift,
                        spec.astype(np.float32), y.astype(np.float32), target)


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_photoanode_csv(path: str | os.PathLike, skip_rows: int | None = None,
                        sum_tol: float | None = 1e-2) -> SpectraTable:
    """Read the study's layout (see module docstring): 7 fractions, Raman columns, ``P`` (mW/cm²)."""
    return read_table(path, ELEMENTS, "P", None, "Sample", skip_rows, sum_tol)


def write_table(table: SpectraTable, path: str | os.PathLike, digits: int = 5) -> None:
    """Write ``table`` in the study's layout (gzip-compressed when ``path`` ends in ``.gz``).
    Refuses to overwrite an existing file."""
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"refusing to overwrite existing file: {path}")
    opener = (lambda: gzip.open(path, "wt", newline="")) if path.endswith(".gz") else (
        lambda: open(path, "w", newline=""))
    with opener() as f:
        w = csv.writer(f)
        w.writerow(["Sample", *table.elements, *[f"{s:.3f}" for s in table.raman_shift],
                    table.target_name])
        fmt = f"{{:.{digits}g}}"
        for k in range(len(table)):
            w.writerow([table.sample[k], *[fmt.format(v) for v in table.composition[k]],
                        *[fmt.format(v) for v in table.spectrum[k]], fmt.format(table.target[k])])


# --------------------------------------------------------------------------- preprocessing
def normalize_spectra(spectrum: np.ndarray, raman_shift: np.ndarray,
                      window: tuple[float, float] = NORM_WINDOW) -> np.ndarray:
    """Divide each spectrum by its maximum within ``window`` (cm⁻¹), as published."""
    spectrum = np.asarray(spectrum, dtype=np.float32)
    raman_shift = np.asarray(raman_shift)
    if spectrum.shape[-1] != raman_shift.shape[0]:
        raise ValueError(f"spectrum has {spectrum.shape[-1]} points but the Raman axis has "
                         f"{raman_shift.shape[0]}")
    sel = (raman_shift >= window[0]) & (raman_shift <= window[1])
    if not sel.any():
        raise ValueError(f"no Raman points in the normalisation window {window} cm⁻¹ "
                         f"(axis {raman_shift[0]:.1f}-{raman_shift[-1]:.1f})")
    m = spectrum[..., sel].max(-1, keepdims=True)
    if np.any(m <= 0):
        raise ValueError(f"spectrum with non-positive maximum in {window} cm⁻¹; cannot normalise")
    return spectrum / m


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """``z = (y - mean) / std``; :meth:`inverse` undoes it (units of ``y``)."""

    mean: float
    std: float

    @classmethod
    def fit(cls, y: np.ndarray) -> "Standardizer":
        y = np.asarray(y, dtype=np.float64)
        if y.size == 0 or not np.all(np.isfinite(y)):
            raise ValueError("cannot standardise an empty or non-finite target")
        std = float(y.std())
        return cls(float(y.mean()), std if std > 0 else 1.0)

    def transform(self, y):
        return (y - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean
