"""One call per use: a computed spectrum (:func:`spectrum`), a predicted one (:func:`predict`),
and XANES models as bundles (:func:`save_model`, :func:`load_model`).

Photon energies in eV; spectra in oscillator strength per eV (eV⁻¹), the units of the
shipped dataset (a model trained on spectra divided by ``data.scale`` is multiplied back).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core import bundle as _bundle
from jaxmat.core.protocol import Model, Params

Z = {"O": 8, "N": 7}


def _check_element(element: str) -> int:
    if element not in Z:
        raise ValueError(f"no XANES for absorbing element {element!r}; choose from {sorted(Z)}")
    return Z[element]


# --------------------------------------------------------------------------- bundles
def save_model(path: str | os.PathLike, model: Model, params: Params, data: Any, *,
               combiner: str = "mean", metadata: dict | None = None,
               overwrite: bool = False) -> str:
    """Save a XANES model (single or committee params) as a bundle; ``data`` is the
    :class:`jaxmat.data.xanes.XanesData` it was trained on (element, grid eV, scale), and
    ``combiner`` the committee combiner :func:`predict` uses (see
    :func:`jaxmat.workflows.xanes.combine.combine`)."""
    from jaxmat.workflows.xanes.combine import COMBINERS

    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner {combiner!r}; choose from {sorted(COMBINERS)}")
    xanes = {"element": data.element, "grid_ev": [float(x) for x in data.grid],
             "scale_per_ev": float(data.scale), "combiner": combiner,
             "output": "spectra divided by scale_per_ev (multiply by it for 1/eV)"}
    return _bundle.save(path, model, params, metadata={**(metadata or {}), "xanes": xanes},
                        overwrite=overwrite)


def load_model(path: str | os.PathLike) -> _bundle.Bundle:
    """Load a bundle written by :func:`save_model`; raises if it holds no XANES model."""
    b = _bundle.load(path)
    _xanes_meta(b)
    return b


def _xanes_meta(b: _bundle.Bundle) -> dict:
    x = b.metadata.get("xanes")
    if not isinstance(x, dict) or not {"element", "grid_ev", "scale_per_ev"} <= set(x):
        raise ValueError(f"{b.path}: not a XANES bundle (metadata has no 'xanes' entry with "
                         "element, grid_ev and scale_per_ev); save it with save_model")
    return x


# --------------------------------------------------------------------------- structures
def structure(smiles_or_atoms: Any, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(atomic numbers, positions Å, smiles or '')`` of a SMILES string (the generator's
    RDKit ETKDG + MMFF geometry, hydrogens added) or of ASE ``Atoms`` (used as given)."""
    if isinstance(smiles_or_atoms, str):
        from jaxmat.workflows.xanes.generate import Settings, embed

        _, numbers, positions, _ = embed(smiles_or_atoms, Settings().seed if seed is None else seed)
        return numbers, np.asarray(positions, np.float64), smiles_or_atoms
    if hasattr(smiles_or_atoms, "get_atomic_numbers") and hasattr(smiles_or_atoms, "get_positions"):
        return (np.asarray(smiles_or_atoms.get_atomic_numbers()),
                np.asarray(smiles_or_atoms.get_positions(), np.float64), "")
    raise ValueError(f"expected a SMILES string or ASE Atoms, got {type(smiles_or_atoms).__name__}")


def _absorbers(numbers: np.ndarray, element: str) -> np.ndarray:
    sites = np.flatnonzero(numbers == _check_element(element))
    if sites.size == 0:
        raise ValueError(f"the structure has no {element} atom (elements found: "
                         f"{sorted(set(int(z) for z in numbers))} by atomic number)")
    return sites


# --------------------------------------------------------------------------- computed spectrum
def spectrum(smiles_or_atoms: Any, element: str = "O", settings: Any = None,
             calibration: dict | None = None) -> dict[str, Any]:
    """Calibrated computed K-edge spectrum of one molecule (the dataset's generator:
    :mod:`jaxmat.workflows.xanes.generate`, transition-potential Hartree-Fock; needs pyscf
    and rdkit).

    Returns ``grid`` (P,) eV, ``spectrum`` (P,) eV⁻¹ (mean over the element's atoms),
    ``site_spectra`` (k, P) and ``site_atoms`` (k,) for every atom of ``element``
    (symmetry-equivalent atoms of a SMILES input share one computed site), ``numbers``,
    ``positions`` Å, and the recorded ``settings``, ``calibration`` (eV shifts) and
    ``broadening``.  The calibration is the shipped store's for the default settings;
    other settings are calibrated anew (acetone, pyridine) unless ``calibration`` is given.
    """
    import dataclasses

    from jaxmat.data import data_path
    from jaxmat.workflows.xanes.broaden import Broadening, broaden, grid
    from jaxmat.workflows.xanes.generate import Settings, calibrate, compute_molecule, site_sticks

    _check_element(element)
    settings = settings or Settings()
    if calibration is None:
        path = data_path("xanes", "store", "calibration.json")
        with open(path) as fh:
            stored = json.load(fh)
        calibration = stored if stored.get("settings") == settings.to_dict() else calibrate(settings)
    if element not in calibration:
        raise ValueError(f"calibration has no {element} entry (keys: {sorted(calibration)})")
    cal = calibration[element]
    if isinstance(smiles_or_atoms, str):
        res = compute_molecule(smiles_or_atoms, settings)
    else:
        numbers, positions, _ = structure(smiles_or_atoms)
        res = compute_molecule("", settings, geometry=(numbers, positions))
    numbers = res["numbers"]
    sites = _absorbers(numbers, element)
    rep = {int(res["classes"][a]): k for k, a in enumerate(res["site_atoms"])}
    g = grid(element)
    rows = []
    for a in sites:
        e, f = site_sticks(res, rep[int(res["classes"][a])])
        edge = float(res["site_edge"][rep[int(res["classes"][a])]]) + cal["edge_shift"]
        rows.append(broaden(e + cal["shift"], f, g, edge, Broadening()))
    rows = np.array(rows)
    return {"grid": g, "spectrum": rows.mean(0), "site_spectra": rows, "site_atoms": sites,
            "numbers": numbers, "positions": res["positions"], "settings": settings.to_dict(),
            "calibration": cal, "broadening": dataclasses.asdict(Broadening()),
            "seconds": float(res["time_total"])}


# --------------------------------------------------------------------------- predicted spectrum
def predict(model: Any, smiles_or_atoms: Any | Sequence[Any], element: str | None = None,
            combiner: str | None = None, batch_size: int = 64) -> dict[str, Any] | list[dict]:
    """Predicted K-edge spectra of one structure (SMILES or ASE Atoms) or a list of them.

    ``model``: a bundle path or a loaded XANES bundle (:func:`load_model`); ``element``
    must be the model's (default: it).  Returns per structure ``grid`` (P,) eV,
    ``spectrum`` (P,) eV⁻¹ (committee members combined by ``combiner``, default the
    bundle's), ``sigma`` (P,) the members' standard deviation (zeros for a single model),
    ``site_spectra``/``site_sigma`` (k, P) for the ``site_atoms`` (k,) of the element,
    ``members`` (M, P), ``numbers``, ``positions`` Å.
    """
    from ase import Atoms

    from jaxmat.core.predict import predict as _predict
    from jaxmat.workflows.xanes.combine import combine

    b = model if isinstance(model, _bundle.Bundle) else load_model(model)
    x = _xanes_meta(b)
    if element is not None and element != x["element"]:
        raise ValueError(f"the model predicts the {x['element']} K-edge, not {element}")
    element = x["element"]
    combiner = combiner or x.get("combiner", "mean")
    single = isinstance(smiles_or_atoms, str) or not isinstance(smiles_or_atoms, (list, tuple))
    items = [smiles_or_atoms] if single else list(smiles_or_atoms)
    structs = [structure(s) for s in items]
    for numbers, _, _ in structs:
        _absorbers(numbers, element)
    atoms = [Atoms(numbers=n, positions=p) for n, p, _ in structs]
    params = b.params if b.n_members else _stack(b.params)
    out = _predict(b.model, params, atoms, batch_size=batch_size, members=True,
                   keys=("xanes", "xanes_site"))
    g = np.asarray(x["grid_ev"])
    scale = float(x["scale_per_ev"])
    results = []
    for k, (numbers, positions, _) in enumerate(structs):
        sites = _absorbers(numbers, element)
        members = np.asarray(out["xanes_members"])[:, k] * scale
        site_m = np.asarray(out["xanes_site_members"][k])[:, sites] * scale
        results.append({
            "grid": g, "spectrum": combine(members, g, combiner), "sigma": members.std(0),
            "site_spectra": np.stack([combine(site_m[:, j], g, combiner)
                                      for j in range(len(sites))]),
            "site_sigma": site_m.std(0), "site_atoms": sites, "members": members,
            "numbers": numbers, "positions": positions, "element": element,
            "combiner": combiner})
    return results[0] if single else results


def _stack(params: Params) -> Params:
    from jaxmat.core import ensemble

    return ensemble.stack([params])
