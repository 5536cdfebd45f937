"""GFN2-xTB Langevin MD datasets of small molecules (rMD17 style) in ``benchmarks/data/xtb``.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/xtb_md_data.py ethanol_600K   # one dataset
    OMP_NUM_THREADS=1 nice -n 10 python scripts/xtb_md_data.py all            # every one
    python scripts/xtb_md_data.py --summary                                   # table of files

Each dataset: the start geometry, the lowest GFN2-xTB minimum (ASE BFGS, fmax 0.05 eV/Å)
among ``CONFORMERS`` RDKit ETKDG + MMFF conformers (fixed seed) of a SMILES, or the shipped
alanine dipeptide relaxed; then several
independent Langevin trajectories (seeds ``(seed, traj)``; 0.5 fs, friction 0.01/fs, FixCom
with ``fixcm=False``), a thermalisation of ``THERMALISE_STEPS`` discarded, a frame every
``STRIDE`` steps (5 fs). Frames go to ``<name>_<T>K.extxyz`` (gzipped once complete if over
3 MB) with ``REF_energy`` (eV, total GFN2-xTB energy), ``REF_forces`` (eV/Å, without the
FixCom projection), and info ``traj``, ``step`` (MD steps since the trajectory start,
thermalisation included), ``temperature_K`` (bath, K), ``T_kin_K`` (instantaneous, K).

Resumable: trajectories advance in turns of ``CHUNK`` frames; after each turn the file is
appended and ``<name>_<T>K.state.json`` (positions, momenta, random-generator state, step,
CPU time of every trajectory) replaced atomically, so a stopped run loses at most one turn
and a rerun (with the same or a larger ``--frames``) continues the same trajectories.

Split (time split per trajectory, :func:`time_split`): the first 60 % of each trajectory's
frames train, the next 7 % validation, the last 33 % test, as ``<name>_<T>K.split.json``
``{"train": [...], "val": [...], "test": [...]}`` (0-based frame indices in the file), the
format of ``jaxmat train``'s ``data.split_file``.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "data", "xtb")

TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
STRIDE = 10                 # MD steps per written frame (5 fs)
THERMALISE_STEPS = 2000     # 1 ps discarded at the start of every trajectory
CHUNK = 25                  # frames per trajectory per turn (one state write per turn)
FMAX = 0.05                 # eV/Å, BFGS relaxation of the start geometry
CONFORMERS = 10             # RDKit conformers relaxed; MD starts from the lowest minimum
ACCURACY = 0.01             # tblite accuracy: labels reproducible from scratch to ~1e-6 eV/Å
GZIP_ABOVE = 3_000_000      # bytes
SPLIT = (0.6, 0.07, 0.33)   # train / validation / test fractions of each trajectory


@dataclasses.dataclass(frozen=True)
class Spec:
    """One dataset: molecule ``name`` (``smiles``, or None for the shipped alanine
    dipeptide) at ``temperature_K`` K, ``frames`` frames from ``trajs`` trajectories.
    ``role``: ``evaluation`` (report on it) or ``selection`` (choose defaults on it).
    ``seed``: of the RDKit conformers (RDKit's seed 0 gives ten copies of one conformer)
    and, with the trajectory id, of the momenta and thermostat noise."""

    name: str
    smiles: str | None
    temperature_K: float
    frames: int
    trajs: int
    role: str
    seed: int = 42

    @property
    def key(self) -> str:
        return f"{self.name}_{self.temperature_K:.0f}K"


DATASETS = {s.key: s for s in (
    Spec("ethanol", "CCO", 600.0, 1500, 4, "evaluation"),
    Spec("malonaldehyde", "O=C/C=C\\O", 600.0, 1500, 4, "selection"),
    Spec("alanine_dipeptide", None, 600.0, 1500, 4, "evaluation"),
    Spec("glycine", "NCC(=O)O", 600.0, 1500, 4, "selection"),
    Spec("ethanol", "CCO", 300.0, 1000, 4, "evaluation"),
)}


def calculator() -> Any:
    """The GFN2-xTB labeller (tblite, quiet, tight SCF so labels do not depend on the
    wavefunction guess)."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0, accuracy=ACCURACY)


def start_geometries(spec: Spec) -> list:
    """Unrelaxed candidate starts (Å): ``CONFORMERS`` RDKit ETKDG + MMFF conformers with
    seed ``spec.seed``, or the shipped alanine dipeptide."""
    from ase import Atoms

    if spec.smiles is None:
        if spec.name != "alanine_dipeptide":
            raise ValueError(f"{spec.key}: no SMILES and not the shipped alanine dipeptide")
        from jaxmat.workflows.adversarial.systems import alanine_dipeptide

        return [alanine_dipeptide()]
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(spec.smiles)
    if mol is None:
        raise ValueError(f"{spec.key}: RDKit cannot parse SMILES {spec.smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = spec.seed
    ids = list(AllChem.EmbedMultipleConfs(mol, CONFORMERS, params))
    if not ids:
        raise RuntimeError(f"{spec.key}: ETKDG embedding of {spec.smiles!r} failed")
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
    z = [a.GetAtomicNum() for a in mol.GetAtoms()]
    out = []
    for i in ids:
        pos = mol.GetConformer(i).GetPositions()
        out.append(Atoms(z, pos - pos.mean(axis=0)))
    return out


def relax(atoms: Any, calc: Any) -> Any:
    """GFN2-xTB minimum near ``atoms`` (BFGS to ``FMAX`` eV/Å)."""
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = calc
    if not BFGS(atoms, logfile=None).run(fmax=FMAX, steps=1000):
        raise RuntimeError(f"BFGS did not reach fmax {FMAX} eV/Å in 1000 steps "
                           f"(max |F| {np.abs(atoms.get_forces()).max():.3g} eV/Å)")
    return atoms


def lowest_minimum(spec: Spec, calc: Any) -> Any:
    """The lowest GFN2-xTB minimum among the relaxed candidate starts."""
    best = None
    for atoms in start_geometries(spec):
        atoms = relax(atoms, calc)
        e = float(atoms.get_potential_energy())
        if best is None or e < best[0] - 1e-6:
            best = (e, atoms)
    return best[1]


def _dynamics(numbers: np.ndarray, traj: dict, temperature_K: float, calc: Any) -> tuple:
    """(atoms, Langevin) continuing trajectory state ``traj`` exactly: positions, momenta
    and the thermostat's random stream (``jaxmat``'s ``langevin``: FixCom, fixcm=False)."""
    from ase import Atoms

    from jaxmat.workflows.adversarial.active import langevin

    atoms = Atoms(numbers, np.asarray(traj["positions"]))
    atoms.calc = calc
    dyn = langevin(atoms, temperature_K, TIMESTEP_FS, FRICTION_PER_FS,
                   np.random.default_rng(0))
    atoms.set_momenta(np.asarray(traj["momenta"]), apply_constraint=False)
    dyn.rng.bit_generator.state = traj["rng"]
    return atoms, dyn


def _frame(atoms: Any, traj_id: int, step: int, temperature_K: float) -> Any:
    from ase import Atoms

    frame = Atoms(atoms.numbers, atoms.positions.copy())
    frame.info.update(REF_energy=float(atoms.get_potential_energy()), traj=traj_id,
                      step=step, temperature_K=temperature_K,
                      T_kin_K=float(atoms.get_temperature()))
    frame.arrays["REF_forces"] = atoms.get_forces(apply_constraint=False).copy()
    return frame


def new_state(spec: Spec, calc: Any) -> dict:
    """Relaxed start and, per trajectory, Maxwell–Boltzmann momenta at ``temperature_K``
    from the generator seeded ``(seed, traj)``."""
    from jaxmat.workflows.adversarial.active import langevin

    t0 = time.process_time()
    atoms = lowest_minimum(spec, calc)
    trajs = []
    for k in range(spec.trajs):
        a = atoms.copy()
        dyn = langevin(a, spec.temperature_K, TIMESTEP_FS, FRICTION_PER_FS,
                       np.random.default_rng((spec.seed, k)))
        trajs.append({"positions": a.positions.tolist(), "momenta": a.get_momenta().tolist(),
                      "rng": dyn.rng.bit_generator.state, "step": 0, "frames": 0,
                      "cpu_s": 0.0})
    return {"dataset": spec.key, "spec": dataclasses.asdict(spec),
            "settings": settings(), "numbers": atoms.numbers.tolist(),
            "relaxed_positions": atoms.positions.tolist(),
            "relaxed_energy": float(atoms.get_potential_energy()),
            "relax_cpu_s": time.process_time() - t0, "trajs": trajs}


def settings() -> dict:
    import importlib.metadata as md

    return {"method": "GFN2-xTB", "tblite": md.version("tblite"), "accuracy": ACCURACY,
            "ase": md.version("ase"), "rdkit": md.version("rdkit"),
            "timestep_fs": TIMESTEP_FS, "friction_per_fs": FRICTION_PER_FS, "stride": STRIDE,
            "thermalise_steps": THERMALISE_STEPS, "relax_fmax": FMAX,
            "conformers": CONFORMERS, "split": list(SPLIT)}


def advance(state: dict, k: int, n_frames: int, calc: Any) -> list:
    """Run trajectory ``k`` of ``state`` (updated in place) through its thermalisation if
    due, then ``n_frames`` frames; returns the new frames."""
    spec = state["spec"]
    traj = state["trajs"][k]
    t0 = time.process_time()
    atoms, dyn = _dynamics(np.asarray(state["numbers"]), traj, spec["temperature_K"], calc)
    if traj["step"] < THERMALISE_STEPS:
        dyn.run(THERMALISE_STEPS - traj["step"])
        traj["step"] = THERMALISE_STEPS
    frames = []
    for _ in range(n_frames):
        dyn.run(STRIDE)
        traj["step"] += STRIDE
        frames.append(_frame(atoms, k, traj["step"], spec["temperature_K"]))
    if not all(np.isfinite(f.info["REF_energy"]) and np.isfinite(f.arrays["REF_forces"]).all()
               for f in frames):
        raise RuntimeError(f"{state['dataset']} trajectory {k}: non-finite energy or forces "
                           f"before step {traj['step']}")
    traj.update(positions=atoms.positions.tolist(), momenta=atoms.get_momenta().tolist(),
                rng=dyn.rng.bit_generator.state, frames=traj["frames"] + n_frames,
                cpu_s=traj["cpu_s"] + time.process_time() - t0)
    return frames


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def paths(key: str, out: str = OUT) -> dict[str, str]:
    base = os.path.join(out, key)
    return {"xyz": base + ".extxyz", "gz": base + ".extxyz.gz", "state": base + ".state.json",
            "split": base + ".split.json"}


def time_split(trajs: Sequence[int], steps: Sequence[int],
               fractions: Sequence[float] = SPLIT) -> dict[str, list[int]]:
    """Time split per trajectory: frame indices ``{"train", "val", "test"}`` taking, in step
    order within each trajectory, the first ``fractions[0]``, the next ``fractions[1]`` and
    the rest (boundaries rounded to the nearest frame)."""
    if len(trajs) != len(steps):
        raise ValueError(f"{len(trajs)} trajectory ids for {len(steps)} steps")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three numbers >= 0 summing to 1, got {fractions}")
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    trajs, steps = np.asarray(trajs), np.asarray(steps)
    for t in np.unique(trajs):
        idx = np.flatnonzero(trajs == t)
        idx = idx[np.argsort(steps[idx], kind="stable")]
        if len(np.unique(steps[idx])) != len(idx):
            raise ValueError(f"trajectory {t} has repeated steps")
        a = int(round(fractions[0] * len(idx)))
        b = int(round((fractions[0] + fractions[1]) * len(idx)))
        for name, part in zip(out, (idx[:a], idx[a:b], idx[b:])):
            out[name] += [int(i) for i in part]
    return {k: sorted(v) for k, v in out.items()}


def _read(path: str) -> list:
    from ase.io import read

    return read(path, index=":") if os.path.exists(path) else []


def _sync(p: dict, state: dict) -> None:
    """Make the frame file match the state: unpack a finished ``.gz`` to grow it, drop
    frames a stopped run appended after its last state write."""
    from ase.io import write

    if os.path.exists(p["gz"]):
        if os.path.exists(p["xyz"]):
            raise RuntimeError(f"both {p['xyz']} and {p['gz']} exist: remove the stale one")
        with gzip.open(p["gz"], "rb") as src, open(p["xyz"], "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(p["gz"])
    frames = _read(p["xyz"])
    want = [t["frames"] for t in state["trajs"]]
    have = [sum(f.info["traj"] == k for f in frames) for k in range(len(want))]
    if have == want:
        return
    if any(h < w for h, w in zip(have, want)):
        raise RuntimeError(f"{p['xyz']} holds {have} frames per trajectory, fewer than the "
                           f"state's {want}: the file was edited; remove file and state to "
                           f"start again")
    keep, seen = [], [0] * len(want)
    for f in frames:
        k = f.info["traj"]
        if seen[k] < want[k]:
            keep.append(f)
        seen[k] += 1
    write(p["xyz"] + ".tmp", keep, format="extxyz")
    os.replace(p["xyz"] + ".tmp", p["xyz"])
    print(f"  dropped {len(frames) - len(keep)} frames written after the last state save",
          flush=True)


def finish(p: dict) -> str:
    """Write the split file and gzip the frames if large; the path of the frame file."""
    frames = _read(p["xyz"])
    _write_json(p["split"], time_split([f.info["traj"] for f in frames],
                                       [f.info["step"] for f in frames]))
    if os.path.getsize(p["xyz"]) <= GZIP_ABOVE:
        return p["xyz"]
    with open(p["xyz"], "rb") as src, open(p["gz"] + ".tmp", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(p["gz"] + ".tmp", p["gz"])
    os.remove(p["xyz"])
    return p["gz"]


def generate(spec: Spec, frames: int | None = None, out: str = OUT,
             log: Callable[[str], None] = print, make_calc: Callable[[], Any] = calculator) -> str:
    """Create or continue dataset ``spec`` until every trajectory has its share of
    ``frames`` (default ``spec.frames``); returns the frame file's path."""
    frames = spec.frames if frames is None else frames
    if frames % spec.trajs:
        raise ValueError(f"{spec.key}: {frames} frames do not divide into {spec.trajs} "
                         f"trajectories")
    per_traj = frames // spec.trajs
    os.makedirs(out, exist_ok=True)
    p = paths(spec.key, out)
    with _lock(os.path.join(out, f".{spec.key}.lock")):
        return _generate(spec, per_traj, p, log, make_calc)


class _lock:
    """One writer per dataset: an exclusive ``flock`` on a lock file (released by the
    system when the writer dies)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"another process is writing this dataset (holds the lock "
                               f"{self.path})") from None

    def __exit__(self, *exc):
        os.close(self.fd)


def _generate(spec: Spec, per_traj: int, p: dict, log: Callable[[str], None],
              make_calc: Callable[[], Any]) -> str:
    from ase.io import write

    calc = make_calc()
    if os.path.exists(p["state"]):
        with open(p["state"]) as f:
            state = json.load(f)
        if state["spec"]["trajs"] != spec.trajs or state["settings"]["stride"] != STRIDE:
            raise ValueError(f"{p['state']} was made with {state['spec']['trajs']} "
                             f"trajectories and stride {state['settings']['stride']}, "
                             f"asked for {spec.trajs} and {STRIDE}")
        _sync(p, state)
    else:
        for f in (p["xyz"], p["gz"]):
            if os.path.exists(f):
                raise RuntimeError(f"{f} exists without {p['state']}: cannot continue it")
        state = new_state(spec, calc)
        _write_json(p["state"], state)
        log(f"{spec.key}: relaxed start E = {state['relaxed_energy']:.4f} eV "
            f"({state['relax_cpu_s']:.1f} s CPU)")
    while min(t["frames"] for t in state["trajs"]) < per_traj:
        for k, traj in enumerate(state["trajs"]):
            n = min(CHUNK, per_traj - traj["frames"])
            if n <= 0:
                continue
            new = advance(state, k, n, calc)
            write(p["xyz"], new, format="extxyz", append=True)
            _write_json(p["state"], state)
        done = sum(t["frames"] for t in state["trajs"])
        cpu = sum(t["cpu_s"] for t in state["trajs"])
        log(f"{spec.key}: {done}/{per_traj * spec.trajs} frames, {cpu:.0f} s CPU")
    return finish(p)


def _bonds(atoms: Any) -> frozenset:
    """Covalent bonds (pairs within 1.2× the sum of ASE's natural radii)."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    return frozenset((a, b) for a, b in zip(i, j) if a < b)


def summary(out: str = OUT) -> list[dict]:
    """One row per finished dataset in ``out``: frames, split sizes, energy range per atom
    (eV), mean kinetic temperature (K), frames whose covalent bonds differ from the relaxed
    start, CPU time (s)."""
    from ase import Atoms

    rows = []
    for key in DATASETS:
        p = paths(key, out)
        path = p["gz"] if os.path.exists(p["gz"]) else p["xyz"]
        if not os.path.exists(path) or not os.path.exists(p["split"]):
            continue
        frames = _read(path)
        with open(p["state"]) as f:
            state = json.load(f)
        with open(p["split"]) as f:
            split = json.load(f)
        e = np.array([f.info["REF_energy"] / len(f) for f in frames])
        fmax = np.array([np.abs(f.arrays["REF_forces"]).max() for f in frames])
        start = _bonds(Atoms(state["numbers"], state["relaxed_positions"]))
        rows.append({"file": os.path.basename(path), "n_atoms": len(frames[0]),
                     "frames": len(frames), "trajs": len(state["trajs"]),
                     **{f"n_{k}": len(v) for k, v in split.items()},
                     "E_per_atom_min": float(e.min()), "E_per_atom_max": float(e.max()),
                     "E_per_atom_std": float(e.std()), "F_max": float(fmax.max()),
                     "T_kin_mean": float(np.mean([f.info["T_kin_K"] for f in frames])),
                     "bonds_changed": sum(_bonds(f) != start for f in frames),
                     "cpu_s": state["relax_cpu_s"] + sum(t["cpu_s"] for t in state["trajs"]),
                     "role": state["spec"]["role"]})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", help=f"'all' or some of {list(DATASETS)}")
    ap.add_argument("--frames", type=int, default=None, help="total frames (default: table)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--summary", action="store_true", help="print a table of finished files")
    a = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    keys = list(DATASETS) if a.datasets == ["all"] else a.datasets
    bad = [k for k in keys if k not in DATASETS]
    if bad:
        ap.error(f"unknown datasets {bad}; known: {list(DATASETS)} or 'all'")
    for k in keys:
        log(f"{k}: finished -> {generate(DATASETS[k], a.frames, a.out, log)}")
    if a.summary:
        print("| file | atoms | frames (train/val/test) | trajs | E/atom min..max (eV) | "
              "σ(E/atom) (eV) | max abs F (eV/Å) | mean T_kin (K) | bonds changed | CPU (s) | "
              "role |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in summary(a.out):
            print(f"| {r['file']} | {r['n_atoms']} | {r['frames']} ({r['n_train']}/"
                  f"{r['n_val']}/{r['n_test']}) | {r['trajs']} | {r['E_per_atom_min']:.4f}.."
                  f"{r['E_per_atom_max']:.4f} | {r['E_per_atom_std']:.4f} | {r['F_max']:.2f} | "
                  f"{r['T_kin_mean']:.0f} | {r['bonds_changed']} | {r['cpu_s']:.0f} | "
                  f"{r['role']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
