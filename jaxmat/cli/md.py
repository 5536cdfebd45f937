"""``jaxmat md MODEL STRUCTURE``: molecular dynamics with a model bundle.

:func:`run_md` runs :func:`jaxmat.md.simulate` (jitted, the neighbour list on the device):
``nve`` (velocity Verlet), ``nvt`` (Langevin) or ``npt`` (Langevin + Berendsen barostat;
periodic cells and a model with stress). Every ``interval`` steps, step 0 included, a frame
goes to the trajectory (any ASE format by extension: extxyz, ``.traj``) and a row to the
log: time (fs), potential/kinetic/total energy (eV), temperature (K) and, for a
committee, the energy σ (eV) and the largest per-atom force σ (eV/Å).
"""
from __future__ import annotations

import csv
import os
import sys
from typing import Any

import numpy as np

ENSEMBLES = ("nve", "nvt", "npt")
LOG_FIELDS = ("step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K")
SIGMA_FIELDS = ("energy_std_eV", "forces_std_max_eV_per_A")


def run_md(atoms: Any, model: Any, params: Any, *, ensemble: str = "nvt",
           temperature_K: float = 300.0, timestep_fs: float = 0.5, steps: int = 1000,
           interval: int = 10, friction_per_fs: float = 0.01, pressure_GPa: float = 0.0,
           taup_fs: float = 1000.0, compressibility_per_GPa: float = 0.01,
           trajectory: str = "md.extxyz", seed: int = 0,
           committee: bool | None = None) -> list[dict]:
    """Run ``steps`` MD steps of ``atoms`` with a potential ``model`` and its ``params`` (or
    a committee's); velocities drawn at ``temperature_K`` with ``seed``. Writes a frame to
    ``trajectory`` every ``interval`` steps (step 0 included) and returns the log rows (see
    the module docstring). ``compressibility_per_GPa`` is the Berendsen β (NPT)."""
    from ase import units

    import jaxmat.md as md

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    if steps < 1 or interval < 1 or not timestep_fs > 0 or temperature_K < 0:
        raise ValueError("need steps >= 1, interval >= 1, timestep > 0 fs, temperature >= 0 K")
    if ensemble == "npt" and not np.all(atoms.pbc):
        raise ValueError("npt needs a periodic cell (pbc on all three axes)")
    res = md.simulate(model, params, atoms, steps, ensemble=ensemble, timestep_fs=timestep_fs,
                      temperature_K=temperature_K, friction_per_fs=friction_per_fs,
                      pressure=pressure_GPa * units.GPa, barostat_time_fs=taup_fs,
                      compressibility=compressibility_per_GPa / units.GPa,
                      init_temperature_K=temperature_K, seed=seed, log_every=interval,
                      chunk_steps=max(interval, 1000 - 1000 % interval), trajectory=trajectory,
                      traj_every=interval, committee=committee)
    rows = []
    for t, step in enumerate(res.log_steps):
        epot, ekin = float(res.log["energy"][t, 0]), float(res.log["kinetic"][t, 0])
        row = {"step": int(step), "time_fs": float(step * timestep_fs), "epot_eV": epot,
               "ekin_eV": ekin, "etot_eV": epot + ekin,
               "temperature_K": float(res.log["temperature"][t, 0])}
        if res.log["energy_std"][t, 0] > 0:
            row["energy_std_eV"] = float(res.log["energy_std"][t, 0])
            row["forces_std_max_eV_per_A"] = float(res.log["forces_std_max"][t, 0])
        rows.append(row)
    if res.failed[0]:
        print(f"jaxmat md: stopped at step {res.fail_step[0]}: {res.fail_reason[0]}",
              file=sys.stderr)
    return rows


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
    rows = run_md(atoms, b.model, b.params, ensemble=args.ensemble,
                  temperature_K=args.temperature, timestep_fs=args.timestep, steps=args.steps,
                  interval=args.interval, friction_per_fs=args.friction,
                  pressure_GPa=args.pressure, taup_fs=args.taup,
                  trajectory=args.trajectory, seed=args.seed)
    for r in rows:
        print(format_row(r), flush=True)
    write_log(args.log, rows)
    print(f"jaxmat md: wrote {args.trajectory} ({len(rows)} frames) and {args.log}",
          file=sys.stderr)


def _has_stress(b: Any) -> bool:
    cfg = b.model.config
    return bool(isinstance(cfg, dict) and cfg.get("stress"))
