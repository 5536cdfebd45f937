"""Robustness of the simulations a potential drives: the fraction of NN-driven MD replicas
that stay in physical space for a fixed time.

:func:`robustness` runs K Langevin replicas with :func:`jaxmat.md.simulate` (one batched,
jitted call; committee params: the member mean drives) and counts a replica as failed when

* the MD failure detector stops it (:class:`jaxmat.md.FailureCriteria`; for molecules
  :func:`molecule_criteria`: two atoms closer than 0.6 Å, a covalent bond of the start
  stretched beyond 1.6 × the sum of covalent radii, non-finite positions/forces/energy), or
* an oracle, given one, disagrees on a sampled frame: every ``check_every`` steps the frame
  of each replica still alive is labelled, and the replica fails at the first frame where
  ``|E_model − E_oracle| / N > energy_tol`` (eV/atom) or the largest per-atom force error
  ``max_i |F_model,i − F_oracle,i| > forces_tol`` (eV/Å), or where the oracle calculation
  fails (SCF not converged, non-finite result).

Oracle checks are done after the run on the saved frames, replica by replica in time order
until the first disagreement; a replica's failure step is the earlier of the two criteria,
so the result equals stopping the replica at that step.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from jaxmat.core.predict import predict
from jaxmat.core.protocol import Model, Params
from jaxmat.md import FailureCriteria, simulate
from jaxmat.workflows.adversarial.oracle import Oracle

ENERGY_TOL = 0.1  # eV/atom
FORCES_TOL = 1.0  # eV/Å


def molecule_criteria(min_distance: float = 0.6, bond_break: float = 1.6,
                      bond_factor: float = 1.2,
                      topology_time_fs: float | None = None) -> FailureCriteria:
    """Failure criteria for molecules: atoms closer than ``min_distance`` Å, a bond of the
    start (pairs closer than ``bond_factor`` × the sum of covalent radii) longer than
    ``bond_break`` × that sum, non-finite values, and with ``topology_time_fs`` a covalent
    graph that differs from the start's for that long (fs). Geometric and topological
    only: the detector's energy-range and committee-σ criteria are off here, so that the
    success of sampling strategies is not judged by the committees being compared."""
    return FailureCriteria(min_distance=min_distance, bond_break=bond_break,
                           bond_factor=bond_factor, max_forces_std=None, energy_margin=None,
                           topology_time_fs=topology_time_fs)


def _starts(starts: Atoms | Sequence[Atoms], replicas: int) -> list[Atoms]:
    starts = [starts] if isinstance(starts, Atoms) else list(starts)
    if not starts or replicas < 1:
        raise ValueError(f"need at least one start structure and replicas >= 1, got "
                         f"{len(starts)} structures and replicas={replicas}")
    out = []
    for k in range(replicas):
        a = starts[k % len(starts)].copy()
        a.calc = None
        a.set_velocities(np.zeros((len(a), 3)))
        out.append(a)
    return out


def robustness(model: Model, params: Params, starts: Atoms | Sequence[Atoms], *,
               replicas: int = 100, steps: int = 1000, temperature_K: float = 1000.0,
               timestep_fs: float = 0.5, friction_per_fs: float = 0.01,
               criteria: FailureCriteria | None = None, oracle: Oracle | None = None,
               check_every: int | None = None, energy_tol: float | None = ENERGY_TOL,
               forces_tol: float | None = FORCES_TOL, executor: Any = None,
               seed: int = 0) -> dict[str, Any]:
    """Run ``replicas`` NVT (Langevin) replicas for ``steps`` × ``timestep_fs`` fs at
    ``temperature_K`` K from ``starts`` (used in turn; velocities Maxwell–Boltzmann) and
    return the success fraction.

    ``criteria``: the MD failure detector (default :func:`molecule_criteria`). ``oracle``
    with ``check_every`` (steps): label sampled frames and fail replicas beyond
    ``energy_tol`` eV/atom or ``forces_tol`` eV/Å (``None`` switches a tolerance off);
    ``executor`` (any ``concurrent.futures.Executor``) labels them in parallel.

    Returns a dict: ``success_fraction`` (both criteria), ``success_stderr`` (binomial),
    ``success_geometric`` (the detector's criteria alone: no unphysical structure),
    ``failed_geometric`` (K,) bool, ``n_replicas``, ``failed`` (K,) bool, ``fail_step`` (−1 if fine), ``fail_time_fs``, ``fail_reason``,
    ``reasons`` (counts), ``n_oracle_checks``, ``md_seconds``, and ``atoms``: each replica
    at its end, a failed one at its last good step (MD criteria) or at the frame the
    oracle rejected.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if (oracle is None) != (check_every is None):
        raise ValueError("oracle checks need both oracle and check_every "
                         f"(got oracle={oracle!r}, check_every={check_every})")
    if check_every is not None and not 1 <= check_every <= steps:
        raise ValueError(f"check_every must be in [1, steps={steps}], got {check_every}")
    criteria = molecule_criteria() if criteria is None else criteria
    reps = _starts(starts, replicas)
    log_every = check_every or min(10, steps)
    with tempfile.TemporaryDirectory() as tmp:
        traj = os.path.join(tmp, "frames.traj") if oracle is not None else None
        res = simulate(model, params, reps, steps, ensemble="nvt", timestep_fs=timestep_fs,
                       temperature_K=temperature_K, friction_per_fs=friction_per_fs,
                       init_temperature_K=temperature_K, seed=seed, log_every=log_every,
                       chunk_steps=max(log_every, (1000 // log_every) * log_every),
                       trajectory=traj, traj_every=check_every, criteria=criteria,
                       progress=False)
        failed = np.asarray(res.failed, bool).copy()
        failed_geometric = failed.copy()
        fail_step = np.asarray(res.fail_step).copy()
        reasons = list(res.fail_reason)
        atoms = list(res.atoms)
        n_checks = 0
        if oracle is not None:
            from ase.io import read

            frames = [[f for f in read(traj if replicas == 1 else
                                       os.path.join(tmp, f"frames_r{r}.traj"), ":")
                       if f.info["step"] > 0]  # the start itself is not checked
                      for r in range(replicas)]
            n_checks = _oracle_checks(model, params, oracle, frames, check_every, failed,
                                      fail_step, reasons, atoms, energy_tol, forces_tol,
                                      executor)
    k = len(reps)
    frac = float(1.0 - failed.mean())
    return {"success_fraction": frac, "success_stderr": math.sqrt(frac * (1 - frac) / k),
            "success_geometric": float(1.0 - failed_geometric.mean()),
            "failed_geometric": failed_geometric.tolist(), "n_replicas": k, "steps": steps, "timestep_fs": timestep_fs,
            "temperature_K": temperature_K, "failed": failed.tolist(),
            "fail_step": fail_step.tolist(),
            "fail_time_fs": [float(s * timestep_fs) if s >= 0 else None for s in fail_step],
            "fail_reason": reasons, "reasons": dict(Counter(r for r in reasons if r)),
            "n_oracle_checks": n_checks, "md_seconds": res.seconds, "atoms": atoms}


def _oracle_checks(model, params, oracle, frames, check_every, failed, fail_step, reasons,
                   atoms, energy_tol, forces_tol, executor) -> int:
    """Label the frames of live replicas round by round (one round per check step) and fail
    a replica at its first disagreement; updates the arrays in place, returns the calls."""
    n_checks = 0
    n_rounds = max(len(f) for f in frames)
    for c in range(n_rounds):
        step = (c + 1) * check_every
        live = [r for r in range(len(frames)) if c < len(frames[r])
                and (not failed[r] or fail_step[r] > step)]
        if not live:
            break
        batch = [frames[r][c] for r in live]
        pred = predict(model, params, batch, keys=("energy", "forces"))  # committee: mean
        labels = list(executor.map(oracle.label, batch)) if executor is not None \
            else [oracle.label(a) for a in batch]
        n_checks += len(batch)
        for r, a, e, f, lab in zip(live, batch, pred["energy"], pred["forces"], labels):
            why = _disagreement(lab, float(e), np.asarray(f), len(a), energy_tol, forces_tol)
            if why:
                failed[r], fail_step[r], reasons[r] = True, step, why
                atoms[r] = a
    return n_checks


def _disagreement(label, energy: float, forces: np.ndarray, n_atoms: int,
                  energy_tol: float | None, forces_tol: float | None) -> str:
    if not label.ok:
        return "oracle failed"
    if energy_tol is not None and abs(energy - label.energy) / n_atoms > energy_tol:
        return "oracle disagrees (energy)"
    if forces_tol is not None and label.forces is not None and \
            np.max(np.linalg.norm(forces - label.forces, axis=-1)) > forces_tol:
        return "oracle disagrees (forces)"
    return ""
