"""O and N K-edge XANES from first principles: transition-potential Hartree-Fock (PySCF).

Needs the optional ``generators`` extra (``pyscf``, ``rdkit``); the shipped dataset is
read without it (:mod:`jaxmat.data.xanes`).

Per molecule (one geometry and one ground-state SCF shared by every O and N site):

1. geometry: RDKit ETKDG embedding (fixed seed) + MMFF94 relaxation (UFF if MMFF has no
   parameters); Å.
2. ground state: RHF, 6-311+G** on O/N and 6-31G* on C/H/F, density fitting
   (def2-universal-jkfit); the lowest ``n_heavy`` occupied orbitals span the 1s cores.
3. per symmetry-unique absorbing site (RDKit canonical ranks without tie breaking): the
   site's 1s orbital is the projection of its 1s basis function onto the core space
   (localised even when equivalent atoms share delocalised core orbitals).
   ``mode="tp"``: half core hole, i.e. an SCF with occupation 1.5 in that orbital (followed
   through the iterations by maximum overlap with the initial localised orbital), all other
   occupied orbitals doubly occupied.  The SCF is spin-restricted; the hole orbital's
   self-Coulomb term is corrected to its spin-unrestricted value (``+ J_hh / 4``), which
   makes ``-eps_1s`` the Slater transition-state ionisation energy.
   ``mode="gs"`` (faster, less accurate: no core-hole relaxation): ground-state orbitals
   and ``<1s|F|1s>``.
4. transition energies ``eps_a - eps_1s`` (eV) to every virtual ``a``, dipole oscillator
   strengths ``f = 2/3 dE |<1s|r|a>|^2`` (atomic units), ionisation edge ``-eps_1s``.

Raw (uncalibrated) sticks are stored per molecule; :mod:`jaxmat.workflows.xanes.pack` adds one shift
per element (calibrated on acetone O1s->pi* 531.4 eV and pyridine N1s->pi* 398.8 eV, see
:func:`calibrate`) and broadens onto fixed grids.

The result store is a folder with one ``<mol_id>.npz`` per finished molecule and one
``<mol_id>.failed.json`` per failed one; :func:`run` skips both on restart, so generation
resumes where it stopped.  ``settings.json`` pins the method of a store.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmat.core.files import save_npz, write_atomic
from jaxmat.workflows.xanes.broaden import REFERENCES, first_strong

HARTREE = 27.211386245988  # eV
ELEMENTS = ("O", "N")
CORE_Z = {"C": 6, "N": 7, "O": 8, "F": 9}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Method of a spectrum calculation (basis names are PySCF's)."""

    mode: str = "tp"  # "tp" half core hole, "gs" ground-state orbitals
    basis_absorber: str = "6-311+G**"  # on O and N
    basis_other: str = "6-31G*"  # on C, H, F
    auxbasis: str | None = "def2-universal-jkfit"  # None: exact four-index integrals
    hole: float = 0.5  # electrons removed from the site's 1s
    conv_tol: float = 1e-6  # Hartree
    max_cycle: int = 80
    window: float = 40.0  # eV above the ionisation edge kept as sticks
    min_strength: float = 1e-6
    symmetry: bool = True  # compute symmetry-equivalent sites once
    seed: int = 0xF00D
    elements: tuple[str, ...] = ELEMENTS

    def __post_init__(self):
        if self.mode not in ("tp", "gs"):
            raise ValueError(f"mode must be 'tp' or 'gs', got {self.mode!r}")
        if not 0.0 < self.hole <= 1.0:
            raise ValueError(f"hole must be in (0, 1] electrons, got {self.hole}")
        bad = set(self.elements) - set(ELEMENTS)
        if bad:
            raise ValueError(f"unsupported absorbing elements {sorted(bad)}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["elements"] = list(self.elements)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        d = dict(d)
        d["elements"] = tuple(d.get("elements", ELEMENTS))
        return cls(**d)


FAST = Settings(basis_absorber="6-31G*", basis_other="3-21G", auxbasis="def2-universal-jkfit")


# --------------------------------------------------------------------------- geometry
def embed(smiles: str, seed: int = 0xF00D) -> tuple[Any, np.ndarray, np.ndarray, str]:
    """RDKit molecule with hydrogens, atomic numbers, positions (Å) and force field used."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise RuntimeError(f"ETKDG embedding failed for {smiles}")
    ff = "MMFF94"
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=5000)
    else:
        ff = "UFF"
        AllChem.UFFOptimizeMolecule(mol, maxIters=5000)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int32)
    positions = mol.GetConformer().GetPositions()
    return mol, numbers, positions, ff


def site_classes(mol: Any) -> np.ndarray:
    """Symmetry class of every atom (RDKit canonical ranks without tie breaking)."""
    from rdkit import Chem

    return np.array(list(Chem.CanonicalRankAtoms(mol, breakTies=False)), dtype=np.int32)


# --------------------------------------------------------------------------- quantum chemistry
def _mole(numbers: np.ndarray, positions: np.ndarray, settings: Settings):
    from pyscf import gto

    sym = [gto.mole._symbol(int(z)) for z in numbers]
    basis = {s: (settings.basis_absorber if s in ELEMENTS else settings.basis_other)
             for s in set(sym)}
    mol = gto.M(atom=list(zip(sym, positions.tolist())), basis=basis, unit="Angstrom",
                verbose=0, cart=False)
    if mol.nelectron % 2:
        raise ValueError("odd number of electrons: open-shell molecules are not supported")
    return mol


def _rhf(mol, settings: Settings, with_df=None):
    from pyscf import scf

    mf = scf.RHF(mol)
    if settings.auxbasis:
        mf = mf.density_fit(auxbasis=settings.auxbasis)
        if with_df is not None:
            mf.with_df = with_df
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = settings.max_cycle
    return mf


def _site_1s(mol, S, core_c, atom: int) -> np.ndarray:
    """Localised 1s orbital of ``atom``: its 1s basis function projected onto the core space."""
    labels = mol.ao_labels(fmt=False)
    idx = [i for i, lab in enumerate(labels) if lab[0] == atom and lab[2] == "1s"]
    if len(idx) != 1:
        raise RuntimeError(f"atom {atom}: expected one contracted 1s function, got {len(idx)}")
    p = core_c.T @ S[:, idx[0]]
    loc = core_c @ p
    return loc / np.sqrt(loc @ S @ loc)


def _transitions(mol, r_ints, c_hole, eps_hole, c_vir, eps_vir, settings):
    de = eps_vir - eps_hole  # Hartree
    mu = np.einsum("xij,i,ja->ax", r_ints, c_hole, c_vir)
    f = (2.0 / 3.0) * de * np.einsum("ax,ax->a", mu, mu)
    e_ev = de * HARTREE
    ip = -eps_hole * HARTREE
    keep = (e_ev <= ip + settings.window) & (f >= settings.min_strength)
    order = np.argsort(e_ev[keep])
    return e_ev[keep][order], f[keep][order], ip


def _tp_site(mol, gs, S, r_ints, loc, settings: Settings):
    """Half-core-hole SCF on one site -> (energies eV, strengths, edge eV, info)."""
    nocc = mol.nelectron // 2
    c_occ = gs.mo_coeff[:, :nocc]
    occ_total = 2.0 - settings.hole  # electrons left in the hole orbital
    dm0 = 2.0 * c_occ @ c_occ.T - settings.hole * np.outer(loc, loc)
    ref = S @ loc

    def get_occ(mo_energy=None, mo_coeff=None):
        occ = np.zeros(len(mo_energy))
        o = np.argsort(mo_energy, kind="stable")[:nocc]
        occ[o] = 2.0
        k = o[np.argmax((mo_coeff[:, o].T @ ref) ** 2)]
        occ[k] = occ_total
        return occ

    tries = ({}, {"damp": 0.5, "diis_start_cycle": 4, "max_cycle": 3 * settings.max_cycle})
    for extra in tries:
        tp = _rhf(mol, settings, getattr(gs, "with_df", None))
        tp.get_occ = get_occ
        for key, val in extra.items():
            setattr(tp, key, val)
        tp.kernel(dm0=dm0)
        if tp.converged:
            break
    if not tp.converged:
        raise RuntimeError("transition-potential SCF did not converge")
    occ = tp.mo_occ
    k = int(np.flatnonzero(np.isclose(occ, occ_total))[0])
    c_h = tp.mo_coeff[:, k]
    pop = float((c_h @ S @ loc) ** 2)
    # self-Coulomb correction of the spin-restricted fractional orbital: the hole orbital
    # sees (n_h / 2) J_hh instead of the spin-unrestricted 1 J_hh
    vj = tp.get_j(mol, np.outer(c_h, c_h))
    j_hh = float(c_h @ vj @ c_h)
    eps_h = tp.mo_energy[k] + (1.0 - occ_total / 2.0) * j_hh
    vir = occ == 0
    e, f, ip = _transitions(mol, r_ints, c_h, eps_h, tp.mo_coeff[:, vir], tp.mo_energy[vir],
                            settings)
    return e, f, ip, {"hole_population": pop, "scf_cycles": int(getattr(tp, "cycles", -1)),
                      "j_hh": j_hh}


def _gs_site(mol, gs, S, r_ints, loc, settings: Settings):
    fock = gs.get_fock()
    eps_h = float(loc @ fock @ loc)
    vir = gs.mo_occ == 0
    e, f, ip = _transitions(mol, r_ints, loc, eps_h, gs.mo_coeff[:, vir], gs.mo_energy[vir],
                            settings)
    return e, f, ip, {"hole_population": 1.0, "scf_cycles": 0, "j_hh": 0.0}


def compute_molecule(smiles: str, settings: Settings = Settings(),
                     sites: Sequence[int] | None = None,
                     geometry: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> dict[str, np.ndarray]:
    """Raw XANES sticks of every O/N site of one molecule (uncalibrated, eV).

    Returns arrays: ``numbers`` (n,), ``positions`` (n, 3) Å, ``classes`` (n,) symmetry
    class, ``site_atoms`` (k,) computed sites, ``site_edge`` (k,) ionisation edge eV,
    ``stick_energy``/``stick_strength`` concatenated, ``stick_offsets`` (k+1,),
    ``site_hole_population`` (k,), timings (s).  ``sites`` restricts the computed atoms.
    ``geometry`` ``(atomic numbers, positions Å)`` replaces the SMILES embedding (then
    every site is its own symmetry class and ``smiles`` is only recorded).
    """
    t0 = time.perf_counter()
    c0 = time.process_time()
    if geometry is None:
        mol_rd, numbers, positions, ff = embed(smiles, settings.seed)
        classes = site_classes(mol_rd)
        symbols = np.array([a.GetSymbol() for a in mol_rd.GetAtoms()])
    else:
        numbers = np.asarray(geometry[0], dtype=np.int32)
        positions = np.asarray(geometry[1], dtype=np.float64)
        if numbers.ndim != 1 or positions.shape != (len(numbers), 3):
            raise ValueError(f"geometry: {numbers.shape} atomic numbers and positions of shape "
                             f"{positions.shape}; expected (n,) and (n, 3)")
        bad = sorted(set(int(z) for z in numbers) - set(CORE_Z.values()) - {1})
        if bad:
            raise ValueError(f"geometry: atomic numbers {bad} are outside H, C, N, O, F")
        classes = np.arange(len(numbers), dtype=np.int32)
        names = {1: "H", **{z: s for s, z in CORE_Z.items()}}
        symbols = np.array([names[int(z)] for z in numbers])
        ff = "given"
    absorbers = [int(a) for a in np.flatnonzero(np.isin(symbols, settings.elements))]
    if sites is not None:
        absorbers = [a for a in absorbers if a in set(int(s) for s in sites)]
    if settings.symmetry:
        seen, unique = set(), []
        for a in absorbers:
            if classes[a] not in seen:
                seen.add(classes[a])
                unique.append(a)
        absorbers = unique
    t_geom = time.perf_counter() - t0

    mol = _mole(numbers, positions, settings)
    gs = _rhf(mol, settings)
    gs.kernel()
    if not gs.converged:
        raise RuntimeError("ground-state SCF did not converge")
    t_gs = time.perf_counter() - t0 - t_geom
    S = mol.intor("int1e_ovlp")
    r_ints = mol.intor("int1e_r")
    n_heavy = int((numbers > 1).sum())
    order = np.argsort(gs.mo_energy[: mol.nelectron // 2])
    core_c = gs.mo_coeff[:, order[:n_heavy]]

    energies, strengths, offsets, edges, pops, cycles, t_sites = [], [], [0], [], [], [], []
    for a in absorbers:
        ts = time.perf_counter()
        loc = _site_1s(mol, S, core_c, a)
        fn = _tp_site if settings.mode == "tp" else _gs_site
        e, f, ip, info = fn(mol, gs, S, r_ints, loc, settings)
        energies.append(e)
        strengths.append(f)
        offsets.append(offsets[-1] + len(e))
        edges.append(ip)
        pops.append(info["hole_population"])
        cycles.append(info["scf_cycles"])
        t_sites.append(time.perf_counter() - ts)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    return {
        "smiles": np.array(smiles),
        "numbers": numbers,
        "positions": positions,
        "classes": classes,
        "site_atoms": np.array(absorbers, dtype=np.int32),
        "site_element": np.array([symbols[a] for a in absorbers], dtype="<U2"),
        "site_edge": np.array(edges),
        "site_hole_population": np.array(pops),
        "site_scf_cycles": np.array(cycles, dtype=np.int32),
        "stick_energy": cat(energies).astype(np.float32),
        "stick_strength": cat(strengths).astype(np.float32),
        "stick_offsets": np.array(offsets, dtype=np.int64),
        "force_field": np.array(ff),
        "gs_energy": np.array(gs.e_tot * HARTREE),
        "n_basis": np.array(mol.nao),
        "time_geometry": np.array(t_geom),
        "time_ground_state": np.array(t_gs),
        "time_sites": np.array(t_sites),
        "time_total": np.array(time.perf_counter() - t0),
        "cpu_time": np.array(time.process_time() - c0),
    }


def site_sticks(result: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sticks ``(energies eV, strengths)`` of the ``k``-th computed site of a result."""
    o = result["stick_offsets"]
    return result["stick_energy"][o[k]:o[k + 1]], result["stick_strength"][o[k]:o[k + 1]]


# --------------------------------------------------------------------------- calibration
def calibrate(settings: Settings = Settings()) -> dict:
    """One constant shift per element (eV) so that the computed 1s -> pi* of acetone (O)
    and pyridine (N) land on 531.4 eV and 398.8 eV (``shift``), and one for the edge so
    that their 1s ionisation energies land on 537.7 eV and 404.9 eV (``edge_shift``)."""
    out = {"settings": settings.to_dict()}
    for el, (smiles, target, target_ip, label) in REFERENCES.items():
        if el not in settings.elements:
            continue
        res = compute_molecule(smiles, settings)
        k = int(np.flatnonzero(res["site_element"] == el)[0])
        e, f = site_sticks(res, k)
        raw = first_strong(e, f)
        edge = float(res["site_edge"][k])
        out[el] = {"shift": target - raw, "raw_pi_star": raw, "reference": label,
                   "target": target, "smiles": smiles, "edge_shift": target_ip - edge,
                   "raw_edge": edge, "target_edge": target_ip}
    return out


# --------------------------------------------------------------------------- resumable store
def _save_json(path: str, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=1))


def store_status(store: str) -> tuple[set[str], set[str]]:
    """``(done, failed)`` molecule ids in a result store."""
    if not os.path.isdir(store):
        return set(), set()
    names = os.listdir(store)
    done = {n[:-4] for n in names if n.endswith(".npz")}
    failed = {n[: -len(".failed.json")] for n in names if n.endswith(".failed.json")}
    return done, failed


def open_store(store: str, settings: Settings) -> None:
    """Create ``store`` or check that its ``settings.json`` matches ``settings``."""
    os.makedirs(store, exist_ok=True)
    path = os.path.join(store, "settings.json")
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        if old != settings.to_dict():
            raise ValueError(f"{store} was generated with different settings {old}; "
                             "use another folder")
    else:
        _save_json(path, settings.to_dict())


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout("time limit per molecule exceeded")


def _work(args) -> tuple[str, str, float]:
    mol_id, smiles, store, settings_dict, time_limit = args
    settings = Settings.from_dict(settings_dict)
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm) if time_limit else None
    if time_limit:
        signal.alarm(int(time_limit))
    try:
        res = compute_molecule(smiles, settings)
        res["mol_id"] = np.array(mol_id)
        save_npz(os.path.join(store, f"{mol_id}.npz"), res)
        status = "done"
    except Exception as exc:  # recorded, not retried
        _save_json(os.path.join(store, f"{mol_id}.failed.json"), {
            "mol_id": mol_id, "smiles": smiles, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=3), "seconds": time.perf_counter() - t0})
        status = "failed"
    finally:
        if time_limit:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return mol_id, status, time.perf_counter() - t0


def run(molecules: Sequence[dict], store: str, settings: Settings = Settings(),
        workers: int = 1, limit: int | None = None, time_limit: float | None = 1800.0,
        retry_failed: bool = False, log=print) -> dict[str, int]:
    """Compute every molecule (dicts with ``mol_id`` and ``smiles``) not yet in ``store``.

    Each finished molecule is written at once (``<mol_id>.npz``); failures are recorded
    (``<mol_id>.failed.json``) and skipped on later runs unless ``retry_failed``.
    ``workers`` processes run in parallel (``workers=1`` computes in this process);
    ``limit`` caps the number of molecules attempted in this call; ``time_limit`` (s) bounds
    one molecule.  Molecules without O or N, and stereoisomers of an earlier molecule
    (non-empty ``stereo_of``), are skipped.  Returns counts.
    """
    open_store(store, settings)
    cal_path = os.path.join(store, "calibration.json")
    if not os.path.exists(cal_path):
        log("calibrating on acetone and pyridine ...")
        _save_json(cal_path, calibrate(settings))
    done, failed = store_status(store)
    skip = done | (set() if retry_failed else failed)
    todo = []
    for m in molecules:
        if m["mol_id"] in skip or m.get("stereo_of"):
            continue
        if not any(int(m.get(f"n_{el}", 1)) > 0 for el in settings.elements):
            continue
        todo.append((m["mol_id"], m["smiles"], store, settings.to_dict(), time_limit))
    if limit is not None:
        todo = todo[:limit]
    counts = {"done": 0, "failed": 0, "skipped": len(skip)}
    log(f"{len(todo)} molecules to compute, {len(done)} done, {len(failed)} failed before")
    if workers <= 1:
        results = map(_work, todo)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, maxtasksperchild=50)
        results = pool.imap_unordered(_work, todo)
    try:
        for k, (mol_id, status, sec) in enumerate(results):
            counts[status] += 1
            log(f"[{k + 1}/{len(todo)}] {mol_id} {status} {sec:.1f} s")
    finally:
        if pool is not None:
            pool.terminate()
    return counts
