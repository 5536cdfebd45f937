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
from jaxmat.core.files import save_npz
from jaxmat.core.protocol import Model, Params

Z = {"O": 8, "N": 7}


def _check_element(element: str) -> int:
    if element not in Z:
        raise ValueError(f"no XANES for absorbing element {element!r}; choose from {sorted(Z)}")
    return Z[element]


# --------------------------------------------------------------------------- bundles
def save_model(path: str | os.PathLike, model: Model, params: Params, data: Any, *,
               combiner: str = "median", metadata: dict | None = None,
               overwrite: bool = False) -> str:
    """Save a XANES model (single or committee params) as a bundle; ``data`` is the
    :class:`jaxmat.data.xanes.XanesData` it was trained on (element, grid eV, scale), and
    ``combiner`` the committee combiner :func:`predict` uses (see
    :func:`jaxmat.workflows.xanes.combine.combine`); the default ``"median"`` is what the
    validation split picks among 3-member committees on both edges
    (``benchmarks/results/xanes_peaks_*.md``: min(precision, recall) O 59.6 % vs 59.5 %
    aligned, 56.1 % mean; N 52.5 % vs 52.2 %, 51.2 %)."""
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


# --------------------------------------------------------------------------- input checks
#: elements the generator handles (H, C, N, O, F; basis sets and the calibration cover them)
GENERATOR_Z = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def _label(smiles_or_atoms: Any) -> str:
    if isinstance(smiles_or_atoms, str):
        return repr(smiles_or_atoms)
    if hasattr(smiles_or_atoms, "get_chemical_formula"):
        return f"Atoms {smiles_or_atoms.get_chemical_formula()}"
    return type(smiles_or_atoms).__name__


def check_input(smiles_or_atoms: Any, elements: Sequence[str]) -> tuple[str, np.ndarray | None]:
    """Reject what the generator and the models cannot handle, before any computation:
    an absorbing element without XANES, a SMILES RDKit cannot parse, a charged or radical
    species, atoms outside H, C, N, O, F, an absorbing element the molecule lacks.  Each
    error is one line naming the molecule and the element.  Returns ``(canonical SMILES
    or '', atomic numbers with hydrogens)``."""
    name = _label(smiles_or_atoms)
    for el in elements:
        if el not in Z:
            raise ValueError(f"{name}, element {el}: no XANES model or calibration for this "
                             f"element; choose from {sorted(Z)}")
    if isinstance(smiles_or_atoms, str):
        from rdkit import Chem, RDLogger

        RDLogger.DisableLog("rdApp.*")
        mol = Chem.MolFromSmiles(smiles_or_atoms) if smiles_or_atoms.strip() else None
        if mol is None:
            raise ValueError(f"{name}, element {'/'.join(elements)}: RDKit cannot parse this "
                             "SMILES")
        charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
        radicals = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
        if charge or radicals:
            what = f"net charge {charge:+d}" if charge else f"{radicals} radical electron(s)"
            raise ValueError(f"{name}, element {'/'.join(elements)}: {what}; only neutral "
                             "closed-shell molecules are supported")
        canonical = Chem.MolToSmiles(mol)
        numbers = np.array([a.GetAtomicNum() for a in Chem.AddHs(mol).GetAtoms()])
    elif hasattr(smiles_or_atoms, "get_atomic_numbers") and hasattr(smiles_or_atoms,
                                                                    "get_positions"):
        canonical = ""
        numbers = np.asarray(smiles_or_atoms.get_atomic_numbers())
        if int(numbers.sum()) % 2:
            raise ValueError(f"{name}, element {'/'.join(elements)}: odd number of electrons "
                             "(radical); only neutral closed-shell molecules are supported")
    else:
        raise ValueError(f"{name}, element {'/'.join(elements)}: expected a SMILES string or "
                         "ASE Atoms")
    bad = sorted({int(z) for z in numbers} - set(GENERATOR_Z))
    if bad:
        raise ValueError(f"{name}, element {'/'.join(elements)}: atomic numbers {bad} are "
                         "outside H, C, N, O, F (the generator's and the models' elements)")
    for el in elements:
        if not np.any(numbers == Z[el]):
            found = "".join(sorted({GENERATOR_Z[int(z)] for z in numbers}))
            raise ValueError(f"{name}, element {el}: the molecule has no {el} atom "
                             f"(elements found: {found})")
    return canonical, numbers


# --------------------------------------------------------------------------- structures
def structure(smiles_or_atoms: Any, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(atomic numbers, positions Å, smiles or '')`` of a SMILES string (the generator's
    RDKit ETKDG + MMFF geometry, hydrogens added) or of ASE ``Atoms`` (used as given)."""
    if isinstance(smiles_or_atoms, str):
        from jaxmat.workflows.xanes.generate import Settings, embed

        try:
            _, numbers, positions, _ = embed(smiles_or_atoms,
                                             Settings().seed if seed is None else seed)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{smiles_or_atoms!r}: RDKit cannot embed this SMILES ({exc})") \
                from None
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


# --------------------------------------------------------------------------- result cache
_MEMORY: dict[str, dict] = {}
_CALIBRATIONS: dict[str, dict] = {}
#: bump when the generator's raw results change meaning (old cache entries are then unused)
CACHE_VERSION = 1


def cache_dir() -> str:
    """On-disk cache of computed molecules: ``$JAXMAT_CACHE_DIR/xanes`` or
    ``$XDG_CACHE_HOME/jaxmat/xanes`` (default ``~/.cache/jaxmat/xanes``)."""
    root = os.environ.get("JAXMAT_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                            os.path.join(os.path.expanduser("~"), ".cache"), "jaxmat")
    return os.path.join(root, "xanes")


def _cache_key(canonical: str, smiles_or_atoms: Any, settings: Any) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **settings.to_dict()},
                                  sort_keys=True).encode())
    if canonical:
        h.update(b"smiles:" + canonical.encode())
    else:
        h.update(b"atoms:" + np.asarray(smiles_or_atoms.get_atomic_numbers(), np.int64).tobytes())
        h.update(np.round(np.asarray(smiles_or_atoms.get_positions(), np.float64), 6).tobytes())
    return h.hexdigest()[:32]


def _computed(smiles_or_atoms: Any, canonical: str, settings: Any, cache: Any) -> dict:
    """The generator's raw result for one molecule, from the caches when present."""
    from jaxmat.workflows.xanes.generate import compute_molecule

    key = _cache_key(canonical, smiles_or_atoms, settings)
    if cache is not False and key in _MEMORY:
        return _MEMORY[key]
    folder = None if cache is False else (cache_dir() if cache is True else os.fspath(cache))
    path = os.path.join(folder, f"{key}.npz") if folder else None
    if path and os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            res = {k: z[k] for k in z.files}
    else:
        try:
            if canonical:
                res = compute_molecule(canonical, settings)
            else:
                numbers, positions, _ = structure(smiles_or_atoms)
                res = compute_molecule("", settings, geometry=(numbers, positions))
        except RuntimeError as exc:
            if "embedding" in str(exc):
                raise ValueError(f"{_label(smiles_or_atoms)}: RDKit cannot embed this SMILES "
                                 f"({exc})") from None
            raise
        if path:
            os.makedirs(folder, exist_ok=True)
            save_npz(path, res)
    if cache is not False:
        _MEMORY[key] = res
    return res


# --------------------------------------------------------------------------- computed spectrum
def spectrum(smiles_or_atoms: Any, element: str = "O", settings: Any = None,
             calibration: dict | None = None, *, elements: Sequence[str] | None = None,
             cache: bool | str | os.PathLike = True) -> dict[str, Any]:
    """Calibrated computed K-edge spectrum of one molecule (the dataset's generator:
    :mod:`jaxmat.workflows.xanes.generate`, transition-potential Hartree-Fock; needs pyscf
    and rdkit).

    Returns ``grid`` (P,) eV, ``spectrum`` (P,) eV⁻¹ (mean over the element's atoms),
    ``site_spectra`` (k, P) and ``site_atoms`` (k,) for every atom of ``element``
    (symmetry-equivalent atoms of a SMILES input share one computed site), ``numbers``,
    ``positions`` Å, ``smiles`` (RDKit canonical; a SMILES is computed in its canonical
    atom order, so every spelling gives the same result), and the recorded ``settings``,
    ``calibration`` (eV shifts) and ``broadening``.  The calibration is the shipped
    store's for the default settings; other settings are calibrated anew (acetone,
    pyridine) unless ``calibration`` is given.

    ``elements=("O", "N")`` computes the molecule once for all its absorbers and returns
    ``{element: result}``.  ``cache``: results are kept in memory and on disk by canonical
    SMILES (or geometry) + settings (``True``: :func:`cache_dir`; a folder; ``False``: no
    cache).  Bad input raises a one-line ``ValueError`` naming the molecule and element.
    """
    from jaxmat.workflows.xanes.generate import Settings

    many = elements is not None
    elements = tuple(elements) if many else (element,)
    if not elements:
        raise ValueError("elements is empty; give one or more of ('O', 'N')")
    canonical, _ = check_input(smiles_or_atoms, elements)
    settings = settings or Settings()
    missing = [el for el in elements if el not in settings.elements]
    if missing:
        raise ValueError(f"{_label(smiles_or_atoms)}, element {missing[0]}: the settings "
                         f"compute only {list(settings.elements)}")
    if calibration is None:
        calibration = _calibration(settings)
    for el in elements:
        if el not in calibration:
            raise ValueError(f"{_label(smiles_or_atoms)}, element {el}: the calibration has "
                             f"no {el} entry (keys: {sorted(calibration)})")
    res = _computed(smiles_or_atoms, canonical, settings, cache)
    out = {el: _edge(res, el, calibration[el], settings, canonical) for el in elements}
    return out if many else out[element]


def _calibration(settings: Any) -> dict:
    from jaxmat.data import data_path
    from jaxmat.workflows.xanes.generate import calibrate

    with open(data_path("xanes", "store", "calibration.json")) as fh:
        stored = json.load(fh)
    if stored.get("settings") == settings.to_dict():
        return stored
    key = json.dumps(settings.to_dict(), sort_keys=True)
    if key not in _CALIBRATIONS:
        _CALIBRATIONS[key] = calibrate(settings)
    return _CALIBRATIONS[key]


def _edge(res: dict, element: str, cal: dict, settings: Any, canonical: str) -> dict[str, Any]:
    """Calibrated, broadened site and molecule spectra of one element from a raw result."""
    import dataclasses

    from jaxmat.workflows.xanes.broaden import Broadening, broaden, grid
    from jaxmat.workflows.xanes.generate import site_sticks

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
            "numbers": numbers, "positions": res["positions"], "smiles": canonical,
            "element": element, "settings": settings.to_dict(), "calibration": cal,
            "broadening": dataclasses.asdict(Broadening()),
            "seconds": float(res["time_total"])}


# --------------------------------------------------------------------------- predicted spectrum
_SHIPPED: dict[str, _bundle.Bundle] = {}


def shipped_model(element: str, name: str = "") -> _bundle.Bundle:
    """The XANES model shipped in the package data for ``element`` (``files/xanes/models/
    <element>``), loaded once per process; ``name`` labels the molecule in the error."""
    from jaxmat.data import data_path

    if element not in _SHIPPED:
        path = data_path("xanes", "models", element)
        if element not in Z or not os.path.isdir(path):
            have = sorted(e for e in Z if os.path.isdir(data_path("xanes", "models", e)))
            raise ValueError(f"{name or 'structure'}, element {element}: no shipped XANES model "
                             f"for {element} (shipped: {have}); pass a bundle from save_model")
        _SHIPPED[element] = load_model(path)
    return _SHIPPED[element]


def _is_model(x: Any) -> bool:
    return isinstance(x, _bundle.Bundle) or (isinstance(x, (str, os.PathLike))
                                             and os.path.isdir(x))


def predict(model: Any, smiles_or_atoms: Any | Sequence[Any] = None, element: str | None = None,
            combiner: str | None = None, batch_size: int = 64) -> dict[str, Any] | list[dict]:
    """Predicted K-edge spectra of one structure (SMILES or ASE Atoms) or a list of them.

    ``predict(smiles_or_atoms, element)`` uses the model shipped for ``element``
    (:func:`shipped_model`); ``predict(model, smiles_or_atoms, element=None)`` a bundle path
    or a loaded XANES bundle (:func:`load_model`), whose element ``element`` must be
    (default: it).  Returns per structure ``grid`` (P,) eV,
    ``spectrum`` (P,) eV⁻¹ (committee members combined by ``combiner``, default the
    bundle's), ``sigma`` (P,) the members' standard deviation (zeros for a single model),
    ``site_spectra``/``site_sigma`` (k, P) for the ``site_atoms`` (k,) of the element,
    ``members`` (M, P), ``numbers``, ``positions`` Å, ``smiles`` (canonical; a SMILES is
    embedded in RDKit's canonical atom order, as :func:`spectrum` computes it).
    """
    from ase import Atoms

    from jaxmat.core.predict import predict as _predict
    from jaxmat.workflows.xanes.combine import combine

    if not _is_model(model):  # predict(smiles_or_atoms, element): the shipped model
        if element is not None:
            raise ValueError("predict(smiles_or_atoms, element) takes the element second; "
                             "pass a bundle first to use element=")
        model, smiles_or_atoms, element = None, model, smiles_or_atoms
        if not isinstance(element, str):
            raise ValueError(f"{_label(smiles_or_atoms)}: give the absorbing element, e.g. "
                             "predict('CC(=O)OC', 'O'), or a bundle first")
        first = smiles_or_atoms if not isinstance(smiles_or_atoms, (list, tuple)) else (
            smiles_or_atoms[0] if smiles_or_atoms else None)
        if first is not None:
            check_input(first, (element,))
        model = shipped_model(element, _label(first))
    b = model if isinstance(model, _bundle.Bundle) else load_model(model)
    x = _xanes_meta(b)
    single = isinstance(smiles_or_atoms, str) or not isinstance(smiles_or_atoms, (list, tuple))
    items = [smiles_or_atoms] if single else list(smiles_or_atoms)
    if element is not None and element != x["element"]:
        raise ValueError(f"{_label(items[0]) if items else 'no structures'}, element {element}: "
                         f"the model predicts the {x['element']} K-edge, not {element}")
    element = x["element"]
    combiner = combiner or x.get("combiner", "mean")
    # SMILES are embedded in RDKit's canonical atom order, as spectrum() computes them
    canon = [check_input(s, (element,))[0] for s in items]
    structs = [structure(c or s) for c, s in zip(canon, items)]
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
            "smiles": canon[k],
            "combiner": combiner})
    return results[0] if single else results


def _stack(params: Params) -> Params:
    from jaxmat.core import ensemble

    return ensemble.stack([params])
