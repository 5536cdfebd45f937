"""The inverse problem: from a K-edge spectrum back to structure.

* :func:`functional_group` names the absorber's group from the environments of
  :func:`jaxmat.workflows.xanes.baseline.site_environments` (carbonyl, hydroxyl, ether,
  carboxyl/ester, amide, nitrile, amine, aromatic N, ...);
* :class:`GroupClassifier` predicts that group from a site spectrum (multinomial logistic
  regression of scikit-learn on max-normalised spectra, trained with random energy shifts
  so that a calibration offset of a few tenths of an eV does not change the answer);
* :func:`retrieve` ranks candidate molecules by the similarity of their (predicted)
  spectra to a query spectrum (cosine, maximised over small energy shifts);
* :func:`noisy` makes a "measured" spectrum: energy shift, Gaussian noise.

Photon energies in eV; spectra on one common grid.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


# --------------------------------------------------------------------------- group names
def _neighbours(level2: str) -> list[tuple[str, str, str]]:
    """``[(bond, element, neighbour's other bonds), ...]`` from a level-2 environment
    string such as ``O=C(-C-C)`` (see :func:`site_environments`)."""
    out, i = [], 0
    s = level2.lstrip("ONar")  # drop the absorber symbol (and 'ar')
    while i < len(s):
        bond, j = s[i], i + 1
        k = s.index("(", j)
        close = s.index(")", k)
        out.append((bond, s[j:k], s[k + 1:close]))
        i = close + 1
    return out


def functional_group(env: tuple[str, str, str]) -> str:
    """Functional group of an O or N absorber from its ``(level2, level1, element)``
    environment (:func:`jaxmat.workflows.xanes.baseline.site_environments`)."""
    level2, _, el = env
    if not el.startswith(("O", "N")):
        raise ValueError(f"no functional groups for absorber {el!r}")
    nb = _neighbours(level2)
    heavy = [n for n in nb if n[1] != "H"]
    carbonyl_c = any(b == "-" and e == "C" and "=O" in rest for b, e, rest in heavy)
    if el.startswith("O"):
        if el == "Oar" or any(b == ":" for b, _, _ in nb):
            return "aromatic O"
        if any(e in ("N", "O", "F") for _, e, _ in heavy):
            return "O-heteroatom"
        if len(heavy) == 1 and heavy[0][0] == "=":
            rest = heavy[0][2]
            if "-O" in rest:
                return "carboxyl/ester"
            if "-N" in rest or ":N" in rest:
                return "amide"
            return "carbonyl"
        if carbonyl_c:
            return "carboxyl/ester"
        if len(heavy) == 1 and heavy[0][0] == "-":
            return "hydroxyl"
        if len(heavy) == 2:
            return "ether"
        return "other O"
    if any(e in ("N", "O", "F") for _, e, _ in heavy):
        return "N-heteroatom"
    if el == "Nar" or any(b == ":" for b, _, _ in nb):
        return "aromatic N"
    if any(b == "#" for b, _, _ in heavy):
        return "nitrile"
    if any(b == "=" for b, _, _ in heavy):
        return "imine"
    if carbonyl_c:
        return "amide"
    return "amine"


def site_groups(smiles: Sequence[str], site_mol: Sequence[int], site_atom: Sequence[int]
                ) -> list[str]:
    """Functional group of every site (molecule index, atom index in RDKit order with
    hydrogens) of the molecules ``smiles``."""
    from jaxmat.workflows.xanes.baseline import site_environments

    out = []
    for m, a in zip(site_mol, site_atom):
        out.append(functional_group(site_environments(str(smiles[int(m)]), [int(a)])[0]))
    return out


# --------------------------------------------------------------------------- measured spectra
def shift_spectra(grid: np.ndarray, spectra: np.ndarray, shifts: np.ndarray | float) -> np.ndarray:
    """Spectra (S, P) moved by ``shifts`` eV (scalar or (S,)), values held at the ends."""
    spectra = np.atleast_2d(np.asarray(spectra, np.float64))
    shifts = np.broadcast_to(np.asarray(shifts, np.float64), (len(spectra),))
    return np.stack([np.interp(grid - d, grid, y) for y, d in zip(spectra, shifts)])


def noisy(grid: np.ndarray, spectra: np.ndarray, shift_sd: float = 0.2, noise: float = 0.02,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """"Measured" versions of spectra (S, P): each moved by a random energy shift (normal,
    ``shift_sd`` eV) plus Gaussian noise of ``noise`` x its maximum.  Returns
    ``(spectra, shifts eV)``."""
    rng = np.random.default_rng(seed)
    spectra = np.atleast_2d(np.asarray(spectra, np.float64))
    d = rng.normal(0.0, shift_sd, len(spectra))
    out = shift_spectra(grid, spectra, d)
    out = out + noise * spectra.max(1, keepdims=True) * rng.normal(size=out.shape)
    return out, d


def _unit_max(spectra: np.ndarray) -> np.ndarray:
    spectra = np.atleast_2d(np.asarray(spectra, np.float64))
    top = spectra.max(1, keepdims=True)
    if np.any(~np.isfinite(spectra)) or np.any(top <= 0):
        raise ValueError("spectra must be finite with a positive maximum")
    return spectra / top


# --------------------------------------------------------------------------- classifier
class GroupClassifier:
    """Site spectrum -> functional group (see module docstring).  ``augment`` shifted and
    noisy copies per training spectrum (shifts normal with ``shift_sd`` eV, noise
    ``noise`` x max); ``kind``: ``"logistic"`` (multinomial logistic regression, ``C`` its
    inverse L2 strength) or ``"knn"`` (``k`` nearest training spectra, distance-weighted)."""

    def __init__(self, augment: int = 2, shift_sd: float = 0.2, noise: float = 0.02,
                 C: float = 10.0, seed: int = 0, kind: str = "logistic", k: int = 5):
        if kind not in ("logistic", "knn"):
            raise ValueError(f"kind must be 'logistic' or 'knn', got {kind!r}")
        self.augment, self.shift_sd, self.noise, self.C = augment, shift_sd, noise, C
        self.seed, self.kind, self.k = seed, kind, k
        self.model: Any = None

    def fit(self, grid: np.ndarray, spectra: np.ndarray, labels: Sequence[str]) -> GroupClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier

        x = _unit_max(spectra)
        y = np.asarray(labels)
        if len(y) != len(x) or len(set(y)) < 2:
            raise ValueError(f"need labels for all {len(x)} spectra and at least two classes")
        xs, ys = [x], [y]
        for k in range(self.augment):
            xs.append(noisy(grid, x, self.shift_sd, self.noise, seed=self.seed + k + 1)[0])
            ys.append(y)
        self.grid = np.asarray(grid)
        self.model = (LogisticRegression(C=self.C, max_iter=3000) if self.kind == "logistic"
                      else KNeighborsClassifier(self.k, weights="distance"))
        self.model.fit(np.concatenate(xs), np.concatenate(ys))
        return self

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes_)

    def predict_proba(self, spectra: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ValueError("classifier is not fitted")
        return self.model.predict_proba(_unit_max(spectra))

    def predict(self, spectra: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes)[self.predict_proba(spectra).argmax(1)]


def class_report(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/support and the confusion matrix (rows: true
    class, columns: predicted; classes sorted)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = sorted(set(y_true) | set(y_pred))
    p, r, _, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {"accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
            "classes": labels,
            "per_class": {c: {"precision": float(a), "recall": float(b), "support": int(s)}
                          for c, a, b, s in zip(labels, p, r, n)},
            "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


def plot_confusion(report: dict[str, Any], title: str = "", ax: Any = None):
    """Row-normalised confusion matrix of :func:`class_report`; returns the figure."""
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion"], np.float64)
    frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    labels = report["classes"]
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted group")
    ax.set_ylabel("true group")
    ax.set_title(title or f"accuracy {100 * report['accuracy']:.1f} %", fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    ax.figure.tight_layout()
    return ax.figure


# --------------------------------------------------------------------------- retrieval
def similarity(grid: np.ndarray, query: np.ndarray, candidates: np.ndarray,
               max_shift: float = 0.5) -> np.ndarray:
    """Cosine similarity of ``query`` (P,) to each candidate (C, P), maximised over energy
    shifts of the query within ±``max_shift`` eV (grid steps)."""
    grid = np.asarray(grid, np.float64)
    step = float(grid[1] - grid[0])
    n = int(round(max_shift / step))
    c = np.asarray(candidates, np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    shifts = step * np.arange(-n, n + 1)
    q = shift_spectra(grid, np.repeat(np.atleast_2d(query), len(shifts), 0), shifts)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    return (q @ c.T).max(0)


def retrieve(grid: np.ndarray, query: np.ndarray, candidates: np.ndarray,
             max_shift: float = 0.5) -> np.ndarray:
    """Candidate indices ranked best first by :func:`similarity`."""
    return np.argsort(-similarity(grid, query, candidates, max_shift), kind="stable")


def retrieval_accuracy(grid: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                       n_candidates: int = 100, max_shift: float = 0.5, ks=(1, 5),
                       seed: int = 0) -> dict[str, Any]:
    """Top-k accuracy of finding molecule ``i`` (query ``queries[i]``, candidate spectrum
    ``candidates[i]``) among itself and ``n_candidates - 1`` others drawn at random."""
    queries, candidates = np.asarray(queries), np.asarray(candidates)
    if queries.shape != candidates.shape or len(queries) < n_candidates:
        raise ValueError(f"need matching (S, P) queries and candidates with S >= {n_candidates}"
                         f", got {queries.shape} and {candidates.shape}")
    rng = np.random.default_rng(seed)
    ranks = []
    for i in range(len(queries)):
        others = rng.choice(np.delete(np.arange(len(queries)), i), n_candidates - 1, replace=False)
        pool = np.concatenate([[i], others])
        order = retrieve(grid, queries[i], candidates[pool], max_shift)
        ranks.append(int(np.flatnonzero(order == 0)[0]))
    ranks = np.array(ranks)
    return {**{f"top{k}": float(np.mean(ranks < k)) for k in ks}, "n_queries": len(ranks),
            "n_candidates": n_candidates, "median_rank": float(np.median(ranks) + 1),
            "ranks": ranks}
