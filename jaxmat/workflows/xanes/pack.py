"""Pack a generator result store into the shipped dataset ``xanes.npz`` (numpy + RDKit for
the scaffold split; no quantum chemistry).

Every absorbing atom (symmetry-equivalent atoms share the sticks of their computed
representative) gets a spectrum: sticks shifted by the element's calibration, broadened
(:class:`jaxmat.workflows.xanes.broaden.Broadening`, edge = calibrated ionisation energy) onto the
fixed grid.  Arrays of the packed file (``M`` molecules, ``A`` atoms, ``S_X`` sites of
element ``X``, ``P_X`` grid points):

``mol_id``, ``smiles``, ``scaffold`` (M,) str; ``split`` (M,) int8 (0 train, 1 val, 2 test);
``atom_offsets`` (M+1,); ``numbers`` (A,); ``positions`` (A, 3) Å float32;
``X_grid`` (P_X,) eV; ``X_site_mol`` (S_X,) molecule index; ``X_site_atom`` (S_X,) atom index
inside the molecule; ``X_site_edge`` (S_X,) calibrated 1s ionisation energy eV;
``X_site_spectrum`` (S_X, P_X) float32, oscillator strength per eV (eV⁻¹);
``X_mol_index`` (M_X,) molecules with element ``X`` and ``X_mol_spectrum`` (M_X, P_X) their
spectra (mean over the element's sites);
``meta`` JSON string (method, calibration, broadening, counts, timings).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from jaxmat.core.files import save_npz
from jaxmat.workflows.xanes.broaden import GRIDS, REFERENCES, Broadening, broaden, grid

SPLITS = ("train", "val", "test")
#: scaffolds with more molecules than this in the full list always go to training
LARGE_SCAFFOLD = 25


def _unit(key: str, salt: str = "jaxmat-xanes") -> float:
    h = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def murcko(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES ('' for acyclic molecules)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol)


def scaffold_split(smiles: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   reference: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Fixed split by Murcko scaffold: ``(split (n,) int8 0/1/2, scaffolds)``.

    Molecules sharing a ring scaffold land in the same split; the assignment of a scaffold
    is a hash of its SMILES (so a molecule's split never changes as the dataset grows).
    Scaffolds with more than :data:`LARGE_SCAFFOLD` members in ``reference`` (the full
    molecule list; default ``smiles``) go to training; acyclic molecules are assigned one
    by one.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    scaf = [murcko(s) for s in smiles]
    ref = scaf if reference is None else [murcko(s) for s in reference]
    sizes: dict[str, int] = {}
    for s in ref:
        sizes[s] = sizes.get(s, 0) + 1
    cut = np.cumsum(fractions)
    out = np.zeros(len(smiles), np.int8)
    for k, (smi, s) in enumerate(zip(smiles, scaf)):
        if s and sizes.get(s, 0) > LARGE_SCAFFOLD:
            out[k] = 0
            continue
        u = _unit(s if s else f"acyclic:{smi}")
        out[k] = int(np.searchsorted(cut, u, side="right"))
    return np.minimum(out, 2).astype(np.int8), scaf


def _load(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _pack_edge(el: str, results: list, ids: list, cal: dict, broadening: Broadening,
               arrays: dict) -> dict:
    """Broadened site spectra (every atom of element ``el``; symmetry-equivalent atoms share
    their class's computed site) and molecule means into ``arrays``; returns the counts."""
    from jaxmat.workflows.xanes.generate import site_sticks

    g = grid(el)
    z = {"O": 8, "N": 7}[el]
    site_mol, site_atom, site_edge, spectra = [], [], [], []
    for m, r in enumerate(results):
        rep = {int(r["classes"][a]): k for k, a in enumerate(r["site_atoms"])}
        cache = {}
        for a in np.flatnonzero(r["numbers"] == z):
            k = rep.get(int(r["classes"][a]))
            if k is None:
                raise ValueError(f"{ids[m]}: atom {a} ({el}) has no computed site")
            if k not in cache:
                e, f = site_sticks(r, k)
                edge = float(r["site_edge"][k]) + cal["edge_shift"]
                cache[k] = (broaden(e + cal["shift"], f, g, edge, broadening), edge)
            site_mol.append(m)
            site_atom.append(int(a))
            spectra.append(cache[k][0])
            site_edge.append(cache[k][1])
    sm = np.array(site_mol, np.int32)
    site_spec = np.array(spectra, np.float32).reshape(-1, len(g))
    mols = np.unique(sm)
    arrays.update({
        f"{el}_grid": g, f"{el}_site_mol": sm, f"{el}_site_atom": np.array(site_atom, np.int32),
        f"{el}_site_edge": np.array(site_edge, np.float32), f"{el}_site_spectrum": site_spec,
        f"{el}_mol_index": mols,
        f"{el}_mol_spectrum": np.array([site_spec[sm == m].mean(0) for m in mols],
                                       np.float32).reshape(-1, len(g))})
    return {"molecules": int(len(mols)), "sites": len(site_mol),
            "computed_sites": int(sum((r["site_element"] == el).sum() for r in results))}


def pack_store(store: str, out: str, molecules_csv: str | None = None,
               broadening: Broadening = Broadening(), overwrite: bool = False) -> dict:
    """Pack every finished molecule of ``store`` into ``out`` (npz); returns the metadata.

    ``molecules_csv`` (the full list) fixes the scaffold split and drops stereoisomers of
    earlier molecules (its ``stereo_of`` column); refuses to overwrite ``out`` unless
    ``overwrite``.
    """
    from jaxmat.workflows.xanes.generate import store_status

    if not os.path.isdir(store):
        raise FileNotFoundError(store)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    for name in ("settings.json", "calibration.json"):
        if not os.path.exists(os.path.join(store, name)):
            raise FileNotFoundError(os.path.join(store, name))
    with open(os.path.join(store, "settings.json")) as fh:
        settings = json.load(fh)
    with open(os.path.join(store, "calibration.json")) as fh:
        cal = json.load(fh)
    done, failed = store_status(store)
    reference = None
    if molecules_csv is not None:
        from jaxmat.workflows.xanes.molecules import read_list

        listed = read_list(molecules_csv)
        reference = [r["smiles"] for r in listed]
        stereo = {r["mol_id"] for r in listed if r["stereo_of"]}
        done, failed = done - stereo, failed - stereo
    ids = sorted(done)
    if not ids:
        raise ValueError(f"{store}: no finished molecules to pack")
    results = [_load(os.path.join(store, f"{i}.npz")) for i in ids]
    smiles = [str(r["smiles"]) for r in results]
    split, scaf = scaffold_split(smiles, reference=reference)

    arrays: dict[str, np.ndarray] = {
        "mol_id": np.array(ids), "smiles": np.array(smiles), "scaffold": np.array(scaf),
        "split": split,
        "atom_offsets": np.concatenate([[0], np.cumsum([len(r["numbers"]) for r in results])]),
        "numbers": np.concatenate([r["numbers"] for r in results]).astype(np.int32),
        "positions": np.concatenate([r["positions"] for r in results]).astype(np.float32),
    }
    counts = {}
    for el in GRIDS:
        if el in cal:
            counts[el] = _pack_edge(el, results, ids, cal[el], broadening, arrays)
    t_wall = np.array([float(r["time_total"]) for r in results])
    t_cpu = np.array([float(r["cpu_time"]) for r in results])
    heavy = np.array([int((r["numbers"] > 1).sum()) for r in results])
    meta = {
        "description": "O and N K-edge XANES, transition-potential Hartree-Fock (jaxmat.workflows.xanes)",
        "settings": settings,
        "calibration": cal,
        "references": {k: list(v) for k, v in REFERENCES.items()},
        "broadening": {"kind": "gaussian, FWHM ramps from fwhm_below at the edge to "
                       "fwhm_above ramp eV above it", **broadening.__dict__},
        "grids": {k: list(v) for k, v in GRIDS.items()},
        "units": {"energy": "eV", "spectrum": "oscillator strength per eV (1/eV)",
                  "positions": "angstrom"},
        "n_molecules": len(ids),
        "n_failed": len(failed),
        "counts": counts,
        "split_sizes": {s: int((split == k).sum()) for k, s in enumerate(SPLITS)},
        "seconds_per_molecule": {"median_wall": float(np.median(t_wall)),
                                 "mean_wall": float(t_wall.mean()),
                                 "median_cpu": float(np.median(t_cpu)),
                                 "median_wall_9_heavy": float(np.median(t_wall[heavy == 9]))
                                 if (heavy == 9).any() else None},
        "packed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz(out, arrays)
    return meta
