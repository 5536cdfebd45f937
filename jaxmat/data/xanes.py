"""K-edge XANES datasets as graph records with per-site targets.

Two sources give the same :class:`XanesData`:

* :func:`load_xanes` — the dataset shipped with jaxmat (``files/xanes/xanes.npz``: O and N
  K-edges of small C/N/O/F/H molecules from transition-potential Hartree-Fock, see
  ``files/xanes/SOURCE.md`` and :mod:`jaxmat.workflows.xanes`), with its fixed scaffold split.
* :func:`load_feff_pickle` — the public FEFF/QM9 database format: a pickle keyed by
  molecule id holding a pymatgen ``Molecule`` and per-site FEFF ``xmu.dat`` spectra,
  interpolated onto 200-point grids (:data:`FEFF_GRIDS`).  pymatgen is not needed.

Every record carries, for the chosen absorbing element ``X``:
``targets["xanes"]`` (P,) the molecule spectrum = mean over the absorbing atoms with a
spectrum; ``node_targets["xanes_site"]`` (n, P) per-atom spectra (zero rows for other
atoms) and ``node_targets["xanes_absorber"]`` (n,) 1 for atoms with a site spectrum.
Photon energies in eV; spectra in the source's units divided by ``scale``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxmat.data import data_path
from jaxmat.core.graph import Record, make_record

SPLITS = ("train", "val", "test", "all")
ELEMENT_Z = {"C": 6, "N": 7, "O": 8, "F": 9, "H": 1}
#: energy grids (eV) of the FEFF database: start, stop, 200 points
FEFF_GRIDS = {"O": (528.0, 582.0, 200), "N": (395.0, 449.0, 200), "C": (275.0, 329.0, 200)}


@dataclasses.dataclass
class XanesData:
    """Records of one absorbing element with their identifiers.

    ``grid`` (P,) eV; ``scale``: the spectra were divided by it (source units);
    ``records[k].targets["xanes"]`` (P,); per-site targets in ``node_targets``.
    """

    element: str
    grid: np.ndarray
    records: list[Record]
    mol_id: list[str]
    smiles: list[str]
    scale: float
    meta: dict

    def __len__(self) -> int:
        return len(self.records)


def _check_element(element: str, allowed: Sequence[str]) -> int:
    if element not in allowed:
        raise ValueError(f"unknown absorbing element {element!r}; choose from {list(allowed)}")
    return ELEMENT_Z[element]


def site_records(numbers: np.ndarray, positions: np.ndarray, site_atoms: Sequence[int],
                 site_spectra: np.ndarray, cutoff: float, name: str) -> Record:
    """One record with molecule and per-site spectrum targets (see module docstring)."""
    numbers = np.asarray(numbers)
    site_spectra = np.asarray(site_spectra, dtype=np.float64)
    if len(site_atoms) == 0:
        raise ValueError(f"{name}: no site spectra")
    if site_spectra.ndim != 2 or site_spectra.shape[0] != len(site_atoms):
        raise ValueError(f"{name}: site spectra of shape {site_spectra.shape} for "
                         f"{len(site_atoms)} sites")
    if not np.all(np.isfinite(site_spectra)):
        raise ValueError(f"{name}: non-finite spectrum values")
    n, p = len(numbers), site_spectra.shape[1]
    per_atom = np.zeros((n, p))
    absorber = np.zeros(n)
    for a, s in zip(site_atoms, site_spectra):
        if not 0 <= int(a) < n:
            raise ValueError(f"{name}: site index {a} out of range for {n} atoms")
        per_atom[int(a)] = s
        absorber[int(a)] = 1.0
    return make_record(numbers, positions, cutoff, targets={"xanes": site_spectra.mean(0)},
                       node_targets={"xanes_site": per_atom, "xanes_absorber": absorber},
                       name=name)


# --------------------------------------------------------------------------- shipped dataset
def xanes_meta(path: str | None = None) -> dict:
    """Method metadata of the shipped dataset (settings, calibration, counts, timings)."""
    path = path or data_path("xanes", "xanes.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def load_xanes(element: str = "O", split: str = "train", cutoff: float = 5.0,
               path: str | None = None, normalize: bool | None = None) -> XanesData:
    """Shipped O or N K-edge dataset: molecules of ``split`` (``"train"``, ``"val"``,
    ``"test"`` or ``"all"``) that contain ``element``; graph edges within ``cutoff`` Å.

    ``normalize=True`` divides the spectra (1/eV) by the median site-spectrum maximum of the
    whole file (``data.scale``, also in ``data.meta["normalized_by"]``), so that typical
    peaks are of order one; ``False`` keeps 1/eV.  The default (None) normalizes the
    shipped file only: another file (``path``) is never rescaled unless asked, and
    ``normalize`` must then be given explicitly (ValueError otherwise).
    """
    if normalize is None:
        if path is not None:
            raise ValueError(f"{path}: pass normalize=False to keep the file's spectra as they "
                             "are, or normalize=True to divide them by their median site-spectrum "
                             "maximum (the factor is reported as data.scale)")
        normalize = True
    _check_element(element, ("O", "N"))
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    path = path or data_path("xanes", "xanes.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    meta = json.loads(str(a["meta"]))
    key = f"{element}_site_spectrum"
    if key not in a:
        raise ValueError(f"{path}: no {element} spectra")
    spectra = a[key]
    site_mol, site_atom = a[f"{element}_site_mol"], a[f"{element}_site_atom"]
    scale = float(np.median(spectra.max(1))) if normalize and len(spectra) else 1.0
    off = a["atom_offsets"]
    want = {"train": 0, "val": 1, "test": 2}.get(split)
    records, ids, smiles = [], [], []
    order = np.argsort(site_mol, kind="stable")
    bounds = np.searchsorted(site_mol[order], np.arange(len(off)))
    for m in range(len(off) - 1):
        rows = order[bounds[m]:bounds[m + 1]]
        if len(rows) == 0 or (want is not None and int(a["split"][m]) != want):
            continue
        sl = slice(off[m], off[m + 1])
        records.append(site_records(a["numbers"][sl], a["positions"][sl].astype(np.float64),
                                    site_atom[rows], spectra[rows] / scale, cutoff,
                                    name=str(a["mol_id"][m])))
        ids.append(str(a["mol_id"][m]))
        smiles.append(str(a["smiles"][m]))
    meta["normalized_by"] = scale
    return XanesData(element, a[f"{element}_grid"], records, ids, smiles, scale, meta)


# --------------------------------------------------------------------------- FEFF database
def feff_grid(element: str) -> np.ndarray:
    """The 200-point energy grid (eV) of the FEFF database for ``element`` (O, N or C)."""
    _check_element(element, tuple(FEFF_GRIDS))
    lo, hi, n = FEFF_GRIDS[element]
    return np.linspace(lo, hi, n)


def parse_xmu(data: Any, name: str = "xmu.dat") -> tuple[np.ndarray, np.ndarray]:
    """FEFF ``xmu.dat`` (text, or an array of its rows) -> ``(energy eV, mu)``.

    Columns: omega (eV), e, k, mu, mu0, chi; an array with two columns is read as
    ``(energy, mu)``.  Lines starting with ``#`` are comments.
    """
    if isinstance(data, bytes):
        data = data.decode()
    if isinstance(data, str):
        rows = [ln for ln in data.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        try:
            arr = np.loadtxt(io.StringIO("\n".join(rows)), ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{name}: unreadable xmu.dat text ({exc})") from None
    else:
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: spectrum is not numeric") from None
    if arr.ndim != 2 or arr.shape[0] < 2 or (arr.shape[1] != 2 and arr.shape[1] < 4):
        raise ValueError(f"{name}: expected xmu.dat rows with 6 columns (omega e k mu mu0 chi) "
                         f"or (energy, mu) pairs, got shape {arr.shape}")
    energy, mu = (arr[:, 0], arr[:, 1]) if arr.shape[1] == 2 else (arr[:, 0], arr[:, 3])
    if not (np.all(np.isfinite(energy)) and np.all(np.isfinite(mu))):
        raise ValueError(f"{name}: non-finite energies or intensities")
    if np.any(np.diff(energy) <= 0):
        raise ValueError(f"{name}: energies are not strictly increasing")
    return energy, mu


class _Stub:
    """Stand-in for classes of a pickle whose module is not installed (pymatgen)."""

    _args: tuple = ()
    _kwargs: dict = {}

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs, self._state = args, kwargs, {}

    @property
    def _state(self) -> dict:
        return self.__dict__.setdefault("_st", {})

    @_state.setter
    def _state(self, value: dict) -> None:
        self.__dict__["_st"] = value

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self._state = state if isinstance(state, dict) else {"state": state}

    def __hash__(self):
        return hash(self._args) if self._args else id(self)

    def __eq__(self, other):
        return self is other or (isinstance(other, _Stub) and self._args
                                 and self._args == other._args)

    # mapping-like containers (Composition) unpickled through __setitem__
    def __setitem__(self, key, value):
        self._state.setdefault("_items", {})[key] = value

    def append(self, value):
        self._state.setdefault("_list", []).append(value)

    def extend(self, values):
        self._state.setdefault("_list", []).extend(values)


class _StubClass(type):
    pass


def _stub_class(module: str, name: str) -> type:
    def new(cls, *args, **kwargs):
        obj = object.__new__(cls)
        _Stub.__init__(obj, *args, **kwargs)
        return obj

    return _StubClass(name, (_Stub,), {"__module__": module, "__new__": new,
                                       "_stub_name": f"{module}.{name}"})


_SAFE_PREFIXES = ("numpy", "builtins", "collections", "copyreg", "_codecs", "datetime")


class _FeffUnpickler(pickle.Unpickler):
    """Loads plain data, numpy arrays and (without importing it) pymatgen objects."""

    def __init__(self, fh, use_pymatgen: bool):
        super().__init__(fh)
        self._use_pymatgen = use_pymatgen

    def find_class(self, module, name):
        root = module.split(".")[0]
        if root in ("pymatgen", "monty"):
            if self._use_pymatgen:
                return super().find_class(module, name)
            return _stub_class(module, name)
        if root in _SAFE_PREFIXES:
            return super().find_class(module, name)
        raise ValueError(f"refusing to unpickle {module}.{name}: only plain data, numpy and "
                         "pymatgen objects are expected in a FEFF database pickle")


def _symbol(obj: Any) -> str:
    """Element symbol from a str, a pymatgen Element/Species/Composition or a stub."""
    if isinstance(obj, str):
        s = "".join(c for c in obj if c.isalpha())
        if s in ELEMENT_Z:
            return s
        raise ValueError(f"unknown element {obj!r}")
    for attr in ("symbol",):
        if hasattr(obj, attr) and not isinstance(obj, _Stub):
            return _symbol(getattr(obj, attr))
    if isinstance(obj, _Stub):
        if obj._args and isinstance(obj._args[0], str):
            return _symbol(obj._args[0])
        st = obj._state
        for key in ("_data", "_items", "data", "_species", "species", "_el", "element",
                    "_symbol", "symbol"):
            if key in st:
                return _symbol(st[key])
        raise ValueError(f"cannot read an element from a pickled {type(obj)._stub_name}")
    if isinstance(obj, Mapping):  # Composition-like {Element: amount}
        keys = [k for k, v in obj.items() if float(v) > 0] if obj else []
        if len(keys) != 1:
            raise ValueError(f"site with {len(keys)} species: only ordered sites are supported")
        return _symbol(keys[0])
    if hasattr(obj, "elements") and len(obj.elements) == 1:
        return _symbol(obj.elements[0])
    raise ValueError(f"cannot read an element from {type(obj).__name__}")


def molecule_arrays(mol: Any, name: str = "molecule") -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and Cartesian positions (Å) of a pymatgen ``Molecule``, its
    ``as_dict()`` form, ``{"species": [...], "coords": [...]}`` or an unpickled stand-in."""
    if hasattr(mol, "cart_coords") and hasattr(mol, "species"):  # real pymatgen
        species = [_symbol(s) for s in mol.species]
        coords = np.asarray(mol.cart_coords, dtype=np.float64)
    elif isinstance(mol, Mapping) and "species" in mol and "coords" in mol:
        species = [_symbol(s) for s in mol["species"]]
        coords = np.asarray(mol["coords"], dtype=np.float64)
    elif isinstance(mol, Mapping) and "sites" in mol:  # Molecule.as_dict()
        species = [_symbol(s["species"][0]["element"]) for s in mol["sites"]]
        coords = np.asarray([s["xyz"] for s in mol["sites"]], dtype=np.float64)
    elif isinstance(mol, _Stub):
        st = mol._state
        sites = st.get("_sites", st.get("sites"))
        if sites is None:
            raise ValueError(f"{name}: pickled {type(mol)._stub_name} has no sites")
        species, coords = [], []
        for s in sites:
            if isinstance(s, _Stub):
                ss = s._state
                sp = ss.get("_species", ss.get("species"))
                xyz = ss.get("coords", ss.get("_coords", ss.get("xyz")))
            else:
                sp, xyz = s.species, s.coords
            if sp is None or xyz is None:
                raise ValueError(f"{name}: a pickled site lacks species or coordinates")
            species.append(_symbol(sp))
            coords.append(np.asarray(xyz, dtype=np.float64))
        coords = np.asarray(coords, dtype=np.float64)
    else:
        raise ValueError(f"{name}: not a molecule ({type(mol).__name__})")
    numbers = np.array([ELEMENT_Z[s] for s in species], dtype=np.int32)
    if coords.shape != (len(numbers), 3):
        raise ValueError(f"{name}: coordinates of shape {coords.shape} for {len(numbers)} atoms")
    return numbers, coords


def _entry(value: Any, name: str) -> tuple[Any, Mapping]:
    if isinstance(value, Mapping):
        mol = next((value[k] for k in ("molecule", "structure", "mol") if k in value), None)
        spec = next((value[k] for k in ("spectra", "sites", "xmu") if k in value), None)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        mol, spec = value
    else:
        raise ValueError(f"{name}: expected (molecule, spectra) or a dict with 'molecule' and "
                         f"'spectra', got {type(value).__name__}")
    if mol is None or spec is None:
        raise ValueError(f"{name}: entry needs a 'molecule' and per-site 'spectra'")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{name}: 'spectra' must map site index -> xmu.dat, "
                         f"got {type(spec).__name__}")
    return mol, spec


def read_feff_pickle(path: str | os.PathLike) -> dict:
    """Unpickle a FEFF database file with a restricted unpickler (pymatgen used only if
    installed; otherwise its objects load as inert stand-ins)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"FEFF database not found: {path}")
    try:
        import pymatgen.core  # noqa: F401

        use = True
    except ImportError:
        use = False
    with open(path, "rb") as fh:
        try:
            data = _FeffUnpickler(fh, use).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError,
                IndexError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") \
                from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict keyed by molecule id, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: empty database")
    return dict(data)


def load_feff_pickle(path: str | os.PathLike, element: str = "O", cutoff: float = 5.0,
                     ids: Sequence[str] | None = None, scale: float = 1.0) -> XanesData:
    """FEFF database pickle -> :class:`XanesData` for ``element`` (O, N or C).

    Each entry: ``{mol_id: {"molecule": Molecule, "spectra": {site: xmu}}}`` (or a
    ``(molecule, spectra)`` pair); ``site`` is the absorbing atom's index in the molecule,
    ``xmu`` the ``xmu.dat`` text or its array (mu = column 4).  Spectra are interpolated
    onto :func:`feff_grid` (held constant beyond the computed range) and divided by
    ``scale``.  Sites of other elements are ignored; molecules without a site of
    ``element`` are skipped.  Malformed entries raise ``ValueError`` naming the entry.
    """
    z = _check_element(element, tuple(FEFF_GRIDS))
    g = feff_grid(element)
    data = read_feff_pickle(path)
    keys = list(data) if ids is None else list(ids)
    records, out_ids = [], []
    for key in keys:
        if key not in data:
            raise ValueError(f"{path}: no molecule {key!r}")
        name = f"{os.path.basename(str(path))}[{key!r}]"
        mol, spec = _entry(data[key], name)
        numbers, coords = molecule_arrays(mol, name)
        atoms, rows = [], []
        for site, xmu in sorted(spec.items(), key=lambda kv: int(kv[0])):
            try:
                a = int(site)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: site key {site!r} is not an atom index") from None
            if not 0 <= a < len(numbers):
                raise ValueError(f"{name}: site {a} out of range for {len(numbers)} atoms")
            if numbers[a] != z:
                continue
            e, mu = parse_xmu(xmu, f"{name} site {a}")
            atoms.append(a)
            rows.append(np.interp(g, e, mu) / scale)
        if not atoms:
            continue
        records.append(site_records(numbers, coords, atoms, np.array(rows), cutoff, name))
        out_ids.append(str(key))
    if not records:
        raise ValueError(f"{path}: no {element} K-edge spectra")
    return XanesData(element, g, records, out_ids, [""] * len(out_ids), scale,
                     {"source": str(path), "grid": list(FEFF_GRIDS[element])})
