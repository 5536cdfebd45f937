"""``jaxmat md MODEL STRUCTURE``: molecular dynamics with a model bundle.

:func:`run_md` is the one integration routine (ASE dynamics on the bundle's calculator,
:meth:`jaxmat.core.bundle.Bundle.calculator`): ``nve`` (velocity Verlet), ``nvt`` (Langevin)
or ``npt`` (Berendsen barostat and thermostat; periodic cells and a model with stress).
Non-periodic structures keep their centre of mass fixed (``FixCom``; Langevin with
``fixcm=False``: ASE's default runs a 9-atom molecule 150-185 K too hot). Every
``interval`` steps a frame goes to the trajectory (extxyz or ASE ``.traj``, by extension)
and a row to the log: time (fs), potential/kinetic/total energy (eV), temperature (K) and,
for a committee, the energy σ (eV) and the largest per-atom force σ (eV/Å).
"""
from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

ENSEMBLES = ("nve", "nvt", "npt")
LOG_FIELDS = ("step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K")
SIGMA_FIELDS = ("energy_std_eV", "forces_std_max_eV_per_A")


def run_md(atoms: Any, calc: Any, *, ensemble: str = "nvt", temperature_K: float = 300.0,
           timestep_fs: float = 0.5, steps: int = 1000, interval: int = 10,
           friction_per_fs: float = 0.01, pressure_GPa: float = 0.0, taut_fs: float = 100.0,
           taup_fs: float = 1000.0, compressibility_per_GPa: float = 4.57e-5 * 1e4,
           trajectory: str = "md.extxyz", seed: int = 0,
           on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run ``steps`` MD steps of ``atoms`` with ``calc``; velocities drawn at
    ``temperature_K`` with ``seed``. Writes a frame to ``trajectory`` every ``interval``
    steps (step 0 included); returns the log rows (see the module docstring), each also
    passed to ``on_row``. ``compressibility_per_GPa`` (NPT; default: water's 4.57e-5/bar)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    if steps < 0 or interval < 1 or not timestep_fs > 0 or temperature_K < 0:
        raise ValueError("need steps >= 0, interval >= 1, timestep > 0 fs, temperature >= 0 K")
    periodic = bool(np.all(atoms.pbc))
    if ensemble == "npt" and not periodic:
        raise ValueError("npt needs a periodic cell (pbc on all three axes)")
    atoms = atoms.copy()
    atoms.calc = calc
    if not periodic:
        atoms.set_constraint(FixCom())
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K,
                                 rng=np.random.default_rng(seed))
    Stationary(atoms)
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, dt)
    elif ensemble == "nvt":
        from ase.md.langevin import Langevin

        dyn = Langevin(atoms, dt, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, fixcm=False,
                       rng=np.random.default_rng(seed + 1))
    else:
        from ase.md.nptberendsen import NPTBerendsen

        dyn = NPTBerendsen(atoms, dt, temperature_K=temperature_K,
                           pressure_au=pressure_GPa * units.GPa, taut=taut_fs * units.fs,
                           taup=taup_fs * units.fs,
                           compressibility_au=compressibility_per_GPa / units.GPa)
    rows: list[dict] = []

    def record() -> None:
        row = _row(atoms, dyn.nsteps, timestep_fs)
        rows.append(row)
        _write_frame(trajectory, atoms, row, append=len(rows) > 1)
        if on_row is not None:
            on_row(row)

    dyn.attach(record, interval=interval)
    dyn.run(steps)
    return rows


def _row(atoms: Any, step: int, timestep_fs: float) -> dict:
    epot, ekin = float(atoms.get_potential_energy()), float(atoms.get_kinetic_energy())
    row = {"step": int(step), "time_fs": step * timestep_fs, "epot_eV": epot, "ekin_eV": ekin,
           "etot_eV": epot + ekin, "temperature_K": float(atoms.get_temperature())}
    res = atoms.calc.results
    if "energy_std" in res:
        row["energy_std_eV"] = float(res["energy_std"])
        row["forces_std_max_eV_per_A"] = float(np.max(res["forces_std_atom"]))
    return row


def _write_frame(path: str, atoms: Any, row: dict, append: bool) -> None:
    """One frame with its energy, forces (and stress) and the log row in ``info``."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frame = atoms.copy()
    frame.constraints = []
    res = atoms.calc.results
    frame.calc = SinglePointCalculator(frame, **{k: res[k] for k in ("energy", "forces",
                                                                     "stress") if k in res})
    frame.info = {k: v for k, v in row.items() if k != "epot_eV"}  # no stale input labels
    if path.endswith(".traj"):
        from ase.io.trajectory import Trajectory

        with Trajectory(path, "a" if append else "w") as t:
            t.write(frame)
    else:
        write(path, frame, append=append)


def write_log(path: str, rows: list[dict]) -> None:
    """The MD log rows as CSV."""
    fields = list(LOG_FIELDS) + [f for f in SIGMA_FIELDS if rows and f in rows[0]]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def format_row(row: dict) -> str:
    text = (f"step {row['step']:6d}  t {row['time_fs']:9.1f} fs  Epot {row['epot_eV']:.4f} eV  "
            f"T {row['temperature_K']:7.1f} K  Etot {row['etot_eV']:.4f} eV")
    if "energy_std_eV" in row:
        text += (f"  σE {row['energy_std_eV']:.4f} eV  max σF "
                 f"{row['forces_std_max_eV_per_A']:.4f} eV/Å")
    return text


def main(args: Any) -> None:
    """``jaxmat md`` (arguments from :mod:`jaxmat.cli.main`)."""
    from ase.io import read

    from jaxmat.core import bundle

    for path in (args.trajectory, args.log):
        if os.path.exists(path) and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not os.path.exists(args.structure):
        raise FileNotFoundError(f"structure file not found: {args.structure}")
    b = bundle.load(args.model)
    atoms = read(args.structure, index=args.index)
    if args.ensemble == "npt" and not _has_stress(b):
        raise ValueError(f"npt needs a model that predicts stress; {args.model} was trained "
                         "without (model.stress = true in the train config)")
    for path in (args.trajectory, args.log):
        if os.path.exists(path):
            os.remove(path)
    print(f"jaxmat md: {len(atoms)} atoms, {args.ensemble} at {args.temperature} K, "
          f"{args.steps} steps of {args.timestep} fs"
          + (f", committee of {b.n_members}" if b.n_members else ""), file=sys.stderr)
    rows = run_md(atoms, b.calculator(), ensemble=args.ensemble,
                  temperature_K=args.temperature, timestep_fs=args.timestep, steps=args.steps,
                  interval=args.interval, friction_per_fs=args.friction,
                  pressure_GPa=args.pressure, taut_fs=args.taut, taup_fs=args.taup,
                  trajectory=args.trajectory, seed=args.seed,
                  on_row=lambda r: print(format_row(r), flush=True))
    write_log(args.log, rows)
    print(f"jaxmat md: wrote {args.trajectory} ({len(rows)} frames) and {args.log}",
          file=sys.stderr)


def _has_stress(b: Any) -> bool:
    cfg = b.model.config
    return bool(isinstance(cfg, dict) and cfg.get("stress"))
