"""The failure detector measured against an oracle.

An oracle (an ASE calculator, or ``f(atoms) -> (energy eV, forces eV/Å)`` or an object
with ``.energy``/``.forces``) labels sampled frames of each replica. A frame is
unphysical when the model's force on some atom is off by more than ``force_error`` eV/Å,
or its energy lies more than ``energy_below`` eV below every training energy (an energy
hole). A replica is unphysical from its first such frame. The detector agrees when it
stops the unphysical replicas (recall, delay) and leaves the physical ones running
(false-alarm rate).

:func:`replay` runs the detector over a run's log (criteria with other thresholds than
the run's, for choosing them on validation replicas); :func:`audit` labels a run's kept
frames (``simulate(..., keep_frames=True)``) and compares.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ase import Atoms

from jaxmat.core.calibrate import IDENTITY, apply_map
from jaxmat.md.failure import FailureCriteria


def _call(oracle: Any, atoms: Atoms) -> tuple[float, np.ndarray]:
    if hasattr(oracle, "get_potential_energy") or hasattr(oracle, "calculate"):
        a = atoms.copy()
        a.calc = oracle
        return float(a.get_potential_energy()), np.asarray(a.get_forces())
    out = oracle(atoms)
    if hasattr(out, "energy"):
        if getattr(out, "ok", True) is False:
            raise RuntimeError(f"the oracle failed: {getattr(out, 'error', '')}")
        return float(out.energy), np.asarray(out.forces)
    e, f = out
    return float(e), np.asarray(f)


def training_minimum(training: dict | None, formula: str, n_atoms: int) -> float:
    """Lowest training energy (eV) of a structure of ``n_atoms`` atoms of ``formula``, from
    a bundle's training summary (by formula where present); -inf without one."""
    if not training:
        return -np.inf
    rng = (training.get("energy_per_atom_by_formula_eV") or {}).get(formula) \
        or training.get("energy_per_atom_eV")
    return -np.inf if rng is None else float(rng[0]) * n_atoms


def label_frames(numbers: np.ndarray, positions: np.ndarray, energy: np.ndarray,
                 forces: np.ndarray, oracle: Any, *, cell: np.ndarray | None = None,
                 pbc: Any = False, e_min: float = -np.inf, force_error: float = 1.0,
                 energy_below: float = 0.5, stop_at_first: bool = True) -> dict:
    """Oracle labels of the frames of one replica, in order: ``positions`` (F, N, 3) Å
    with the model's ``energy`` (F,) eV and ``forces`` (F, N, 3) eV/Å. ``e_min``: lowest
    training energy (eV). Returns ``unphysical`` (F,) bool, ``force_error`` (F,) largest
    per-atom force error eV/Å (nan where not labelled), ``energy_hole`` (F,) bool,
    ``labelled`` (F,) bool; with ``stop_at_first`` the oracle stops at the first
    unphysical frame (energy holes need no oracle call)."""
    F = len(positions)
    hole = np.asarray(energy) < e_min - energy_below
    ferr = np.full(F, np.nan)
    labelled = np.zeros(F, bool)
    unphys = hole.copy()
    for t in range(F):
        if stop_at_first and unphys[:t + 1].any():
            break
        if not np.all(np.isfinite(positions[t])):
            unphys[t] = True
            continue
        a = Atoms(numbers, positions=positions[t], cell=cell, pbc=pbc)
        _, f_ref = _call(oracle, a)
        ferr[t] = float(np.max(np.linalg.norm(np.asarray(forces[t]) - f_ref, axis=-1)))
        labelled[t] = True
        unphys[t] |= ferr[t] > force_error
    return {"unphysical": unphys, "force_error": ferr, "energy_hole": hole,
            "labelled": labelled}


def replay(log: dict, log_steps: np.ndarray, n_atoms: int, timestep_fs: float,
           criteria: FailureCriteria, energy_range: tuple[float, float] | None = None,
           scales: tuple = (IDENTITY, IDENTITY)
           ) -> tuple[np.ndarray, np.ndarray]:
    """The detector's first firing step (R,) (-1: never) and code over a run's log, with
    ``criteria`` (energy range, committee σ and topology persistence, plus non-finite
    values; logged every ``log_every`` steps, so a replay fires up to that many steps
    later than the detector inside the run). The log must come from a run that did not stop
    these replicas earlier (e.g. criteria with huge thresholds). ``scales``: the energy and
    forces σ calibration maps (:func:`jaxmat.core.calibrate.sigma_map`)."""
    T, R = log["energy"].shape
    fire = {1: ~np.isfinite(log["energy"]) | ~log["alive"].astype(bool)}
    if criteria.max_forces_std is not None:
        fire[4] = apply_map(log["forces_std_max"], scales[1], components=3) > \
            criteria.max_forces_std
    if criteria.max_energy_std is not None:
        fire[5] = apply_map(log["energy_std"], scales[0]) > criteria.max_energy_std
    if criteria.energy_margin is not None and energy_range is not None:
        e = log["energy"] / n_atoms
        fire[6] = (e < energy_range[0] - criteria.energy_margin) | \
                  (e > energy_range[1] + criteria.energy_margin)
    if criteria.topology_time_fs is not None:
        n = log["topology_steps"]
        fire[7] = (n > 0) & ((n - 1) * timestep_fs >= criteria.topology_time_fs)
    step = np.full(R, -1)
    code = np.zeros(R, int)
    for c in sorted(fire):
        f = np.asarray(fire[c], bool)
        for r in range(R):
            hit = np.flatnonzero(f[:, r])
            if hit.size and (step[r] < 0 or log_steps[hit[0]] < step[r]):
                step[r], code[r] = log_steps[hit[0]], c
    return step, code


def agreement(unphysical_step: np.ndarray, detected_step: np.ndarray,
              timestep_fs: float) -> dict:
    """Recall (unphysical replicas the detector stopped), false-alarm rate (physical
    replicas it stopped) and the delay (ps; detector step − first unphysical frame, median
    and 90th percentile over caught replicas; negative: the detector was first). Steps
    (R,) with -1 for never."""
    u, d = np.asarray(unphysical_step), np.asarray(detected_step)
    bad, stopped = u >= 0, d >= 0
    delays = (d[bad & stopped] - u[bad & stopped]) * timestep_fs / 1000.0
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    return {"n_replicas": len(u), "n_unphysical": n_bad, "n_physical": n_good,
            "caught": int((bad & stopped).sum()),
            "false_alarms": int((~bad & stopped).sum()),
            "recall": float((bad & stopped).sum() / n_bad) if n_bad else None,
            "false_alarm_rate": float((~bad & stopped).sum() / n_good) if n_good else None,
            "median_delay_ps": float(np.median(delays)) if delays.size else None,
            "p90_delay_ps": float(np.percentile(delays, 90)) if delays.size else None,
            "delays_ps": delays.tolist()}


def audit(result: Any, oracle: Any, numbers: np.ndarray | None = None, *,
          training: dict | None = None, every: int = 1, force_error: float = 1.0,
          energy_below: float = 0.5, progress: Callable[[int, int], None] | None = None) -> dict:
    """Label every ``every``-th kept frame of a run (:class:`jaxmat.md.MDResult` from
    ``simulate(..., keep_frames=True)``) with ``oracle`` and measure its detector:
    :func:`agreement` plus per replica the first unphysical step. A replica stopped by the
    detector is labelled up to its last good frame (after it, it is frozen), so a stop the
    oracle cannot confirm there counts as a false alarm. ``training``: the bundle's
    training summary (energy holes; without it only forces are checked)."""
    if result.frames is None:
        raise ValueError("the run kept no frames; run simulate(..., keep_frames=True)")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    a0 = result.atoms[0]
    numbers = a0.numbers if numbers is None else numbers
    fr = result.frames
    e_min = training_minimum(training, a0.get_chemical_formula(), len(a0))
    idx = np.arange(0, len(fr["step"]), every)
    unphys_step = np.full(len(result.atoms), -1)
    per = []
    for r in range(len(result.atoms)):
        last = result.fail_step[r] if result.failed[r] else result.steps
        sel = idx[fr["step"][idx] <= max(last - 1, 0)] if result.failed[r] else idx
        lab = label_frames(numbers, fr["positions"][sel, r], fr["energy"][sel, r],
                           fr["forces"][sel, r], oracle, cell=fr["cell"][sel[0], r] if
                           len(sel) else None, pbc=a0.pbc, e_min=e_min,
                           force_error=force_error, energy_below=energy_below)
        hit = np.flatnonzero(lab["unphysical"])
        if hit.size:
            unphys_step[r] = fr["step"][sel[hit[0]]]
        per.append({"replica": r, "frames_labelled": int(lab["labelled"].sum()),
                    "unphysical_step": int(unphys_step[r]),
                    "max_force_error": float(np.nanmax(lab["force_error"]))
                    if lab["labelled"].any() else None})
        if progress is not None:
            progress(r + 1, len(result.atoms))
    out = agreement(unphys_step, np.asarray(result.fail_step), result.timestep_fs)
    out.update(force_error_eV_per_A=force_error, energy_below_eV=energy_below,
               every_frames=every, replicas=per)
    return out
