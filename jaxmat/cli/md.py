"""``jaxmat md MODEL STRUCTURE``: molecular dynamics with a model bundle.

:func:`run_md` runs :func:`jaxmat.md.simulate` (jitted, the neighbour list on the device)
for one or more replicas: ``nve`` (velocity Verlet), ``nvt`` (Langevin) or ``npt``
(Langevin + Berendsen barostat; periodic cells and a model with stress; pressure eV/Å³).
Every ``interval`` steps, step 0 included, a frame goes to the trajectory (any ASE format
by extension; ``NAME_r{k}.ext`` per replica when there are several) and a row per replica
to the CSV log, written as the run goes: time (fs), potential/kinetic/total energy (eV),
temperature (K; centre-of-mass motion excluded) and, for a committee, the energy σ (eV)
and the largest per-atom force σ (eV/Å). The failure detector (:mod:`jaxmat.md.failure`)
uses the bundle's training energy range and σ calibration; its report goes to
``TRAJECTORY.failures.json``.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from typing import Any

import numpy as np

ENSEMBLES = ("nve", "nvt", "npt")
LOG_FIELDS = ("replica", "step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K",
              "alive")
SIGMA_FIELDS = ("energy_std_eV", "forces_std_max_eV_per_A")


def rows_of(steps: np.ndarray, rec: dict, timestep_fs: float, sigma: bool) -> list[dict]:
    """Log rows (one per replica and logged step) from a record ``rec[k]`` (T, R)."""
    rows = []
    for t, step in enumerate(steps):
        for r in range(rec["energy"].shape[1]):
            epot, ekin = float(rec["energy"][t, r]), float(rec["kinetic"][t, r])
            row = {"replica": r, "step": int(step), "time_fs": float(step * timestep_fs),
                   "epot_eV": epot, "ekin_eV": ekin, "etot_eV": epot + ekin,
                   "temperature_K": float(rec["temperature"][t, r]),
                   "alive": bool(rec["alive"][t, r])}
            if sigma:
                row["energy_std_eV"] = float(rec["energy_std"][t, r])
                row["forces_std_max_eV_per_A"] = float(rec["forces_std_max"][t, r])
            rows.append(row)
    return rows


class CSVLog:
    """The CSV log, appended (and flushed) as rows come."""

    def __init__(self, path: str | None, sigma: bool):
        self.fields = list(LOG_FIELDS) + (list(SIGMA_FIELDS) if sigma else [])
        self.f = open(path, "w", newline="") if path else None
        if self.f:
            self.w = csv.DictWriter(self.f, fieldnames=self.fields)
            self.w.writeheader()

    def write(self, rows: list[dict]) -> None:
        if self.f:
            self.w.writerows(rows)
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def run_md(atoms: Any, model: Any, params: Any, *, ensemble: str = "nvt",
           temperature_K: float = 300.0, timestep_fs: float = 0.5, steps: int = 1000,
           interval: int = 10, friction_per_fs: float = 0.01, pressure: float = 0.0,
           taup_fs: float = 1000.0, compressibility_per_GPa: float = 0.01,
           trajectory: str = "md.extxyz", log: str | None = None, seed: int = 0,
           replicas: int = 1, criteria: Any = None, training: dict | None = None,
           calibration: dict | None = None, committee: bool | None = None,
           progress_every_s: float = 30.0, keep_frames: bool = False) -> tuple[list[dict], Any]:
    """Run ``steps`` MD steps of ``replicas`` copies of ``atoms`` with a potential ``model``
    and its ``params`` (or a committee's); velocities drawn at ``temperature_K`` with
    ``seed``; ``pressure`` eV/Å³ (NPT), ``compressibility_per_GPa`` the Berendsen β.
    ``criteria`` (:class:`jaxmat.md.FailureCriteria`, default on) with the bundle's
    ``training`` summary and ``calibration``. Writes a frame to ``trajectory`` every
    ``interval`` steps (step 0 included) and the rows to the CSV ``log`` as they come;
    returns the rows (see the module docstring) and the :class:`jaxmat.md.MDResult`."""
    from ase import units

    import jaxmat.md as md

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    if steps < 1 or interval < 1 or not timestep_fs > 0 or temperature_K < 0 or replicas < 1:
        raise ValueError("need steps >= 1, interval >= 1, replicas >= 1, timestep > 0 fs, "
                         "temperature >= 0 K")
    if ensemble == "npt" and not np.all(atoms.pbc):
        raise ValueError("npt needs a periodic cell (pbc on all three axes)")
    sigma = bool(committee) if committee is not None else None
    state = {"log": None, "rows": []}

    def on_chunk(steps_here, rec):
        if state["log"] is None:
            state["sigma"] = bool(np.any(rec["energy_std"] > 0)) if sigma is None else sigma
            state["log"] = CSVLog(log, state["sigma"])
        rows = rows_of(steps_here, rec, timestep_fs, state["sigma"])
        state["log"].write(rows)
        state["rows"].extend(rows)

    try:
        res = md.simulate(model, params, atoms, steps, ensemble=ensemble,
                          timestep_fs=timestep_fs, temperature_K=temperature_K,
                          friction_per_fs=friction_per_fs, pressure=pressure,
                          barostat_time_fs=taup_fs,
                          compressibility=compressibility_per_GPa / units.GPa,
                          replicas=replicas, init_temperature_K=temperature_K, seed=seed,
                          log_every=interval,
                          chunk_steps=max(interval, 1000 - 1000 % interval),
                          trajectory=trajectory, traj_every=interval, committee=committee,
                          criteria=md.FailureCriteria() if criteria is None else criteria,
                          training=training, calibration=calibration,
                          progress_every_s=progress_every_s, callback=on_chunk,
                          keep_frames=keep_frames)
    finally:
        if state["log"] is not None:
            state["log"].close()
    return state["rows"], res


def report_path(trajectory: str) -> str:
    """The failure report beside the trajectory: ``md.extxyz`` -> ``md.failures.json``."""
    return os.path.splitext(trajectory)[0] + ".failures.json"


def criteria_from_args(args: Any) -> Any:
    """:class:`jaxmat.md.FailureCriteria` from the CLI options (unset: library defaults)."""
    from jaxmat.md.failure import CRITERIA, FailureCriteria

    given = {f: getattr(args, f) for f in CRITERIA.values() if hasattr(args, f)}
    return FailureCriteria(**given).without(*args.off)


def main(args: Any) -> None:
    """``jaxmat md`` (arguments from :mod:`jaxmat.cli.main`)."""
    from ase import units
    from ase.io import read

    from jaxmat.core import bundle

    report = report_path(args.trajectory)
    for path in (args.trajectory, args.log, report):
        if os.path.exists(path) and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not os.path.exists(args.structure):
        raise FileNotFoundError(f"structure file not found: {args.structure}")
    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    criteria = criteria_from_args(args)
    b = bundle.load(args.model)
    atoms = read(args.structure, index=args.index)
    b.check_elements(atoms.numbers, args.structure)
    if args.ensemble == "npt" and not _has_stress(b):
        raise ValueError(f"npt needs a model that predicts stress; {args.model} was trained "
                         "without (model.stress = true in the train config)")
    for path in (args.trajectory, args.log, report):
        if os.path.exists(path):
            os.remove(path)
    training, calibration = getattr(b, "training", None), getattr(b, "calibration", None)
    pressure = args.pressure if args.pressure_gpa is None else args.pressure_gpa * units.GPa
    print(f"jaxmat md: {len(atoms)} atoms x {args.replicas} replicas, {args.ensemble} at "
          f"{args.temperature} K, {args.steps} steps of {args.timestep} fs"
          + (f", pressure {pressure:.6g} eV/Å³" if args.ensemble == "npt" else "")
          + (f", committee of {b.n_members}" if b.n_members else ""), file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, res = run_md(atoms, b.model, b.params, ensemble=args.ensemble,
                           temperature_K=args.temperature, timestep_fs=args.timestep,
                           steps=args.steps, interval=args.interval,
                           friction_per_fs=args.friction, pressure=pressure,
                           taup_fs=args.taup, trajectory=args.trajectory, log=args.log,
                           seed=args.seed, replicas=args.replicas, criteria=criteria,
                           training=training, calibration=calibration,
                           progress_every_s=args.progress_every,
                           keep_frames=args.oracle is not None)
    for w in caught:
        print(f"jaxmat md: warning: {w.message} (bundle {args.model})", file=sys.stderr)
    out = res.report()
    out.update(model=args.model, structure=args.structure, ensemble=args.ensemble,
               temperature_K=args.temperature, pressure_eV_per_A3=pressure,
               trajectory=args.trajectory, log=args.log)
    if args.oracle is not None:
        out["audit"] = _audit(res, args, training)
    with open(report, "w") as f:
        json.dump(out, f, indent=1)
    print(res.summary())
    if args.oracle is not None:
        a = out["audit"]
        print(f"audit ({args.oracle}): {a['n_unphysical']} replicas unphysical, "
              f"{a['caught']} caught; {a['false_alarms']}/{a['n_physical']} false alarms")
    print(f"jaxmat md: wrote {args.trajectory} ({len(res.log_steps)} frames per replica), "
          f"{args.log} and {report}", file=sys.stderr)


def _audit(res: Any, args: Any, training: dict | None) -> dict:
    from jaxmat.md.audit import audit
    from jaxmat.workflows.adversarial.oracle import xtb

    if args.oracle_every < 1:
        raise ValueError(f"--oracle-every must be >= 1, got {args.oracle_every}")
    oracle = xtb("GFN2-xTB" if args.oracle == "gfn2-xtb" else "GFN1-xTB")
    return audit(res, oracle, training=training, every=args.oracle_every)


def _has_stress(b: Any) -> bool:
    cfg = b.model.config
    return bool(isinstance(cfg, dict) and cfg.get("stress"))
