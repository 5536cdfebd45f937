"""Molecular dynamics for sampling: the committee-MD baseline of the active loop (batched
replicas on :func:`jaxmat.md.simulate`, each stopped at its first frame over a committee-σ
threshold or beyond an energy cap) and ASE Langevin dynamics for oracle MD data sets."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from jaxmat.core.protocol import Model, Params


def committee_md(model: Model, params: Params, starts: Sequence[Atoms], *, steps: int,
                 temperature_K: float, sigma_stop: float | None,
                 energy_range: tuple[float, float] | None, energy_margin: float | None,
                 timestep_fs: float = 0.5, friction_per_fs: float = 0.01, log_every: int = 5,
                 seed: int = 0) -> tuple[list[Atoms], list[str]]:
    """One replica per start, driven by the committee mean for ``steps`` × ``timestep_fs`` fs
    of Langevin dynamics at ``temperature_K`` K (Maxwell–Boltzmann velocities).

    A replica stops (the MD failure detector checks every step) where the largest per-atom
    committee force σ exceeds ``sigma_stop`` eV/Å (raw σ), where its energy per atom
    leaves ``energy_range`` (eV/atom) by more than ``energy_margin`` eV/atom (the energy
    cap), or where the geometry breaks (atoms closer than 0.6 Å, a covalent bond beyond
    1.6 × the covalent radii, non-finite values); ``None`` switches the σ stop or the cap off.

    Returns the frames of every replica (every ``log_every`` steps after the start, then
    its last good step: where it stopped, or the end; no calculator, zero momenta) and for
    each frame why its replica stopped (``""``: it ran to the end).
    """
    from jaxmat.md import simulate
    from jaxmat.workflows.adversarial.robustness import molecule_criteria

    crit = dataclasses.replace(molecule_criteria(), max_forces_std=sigma_stop,
                               energy_margin=None if energy_range is None else energy_margin)
    reps = []
    for a in starts:
        b = a.copy()
        b.calc, b.info = None, {}
        b.set_constraint()
        b.set_velocities(np.zeros((len(b), 3)))
        reps.append(b)
    training = ({"energy_per_atom_eV": [float(energy_range[0]), float(energy_range[1])]}
                if energy_range is not None else None)
    calibration = {"forces": {"scale": 1.0, "power": 1.0}}  # the threshold is in raw σ
    res = simulate(model, params, reps, steps, ensemble="nvt", timestep_fs=timestep_fs,
                   temperature_K=temperature_K, friction_per_fs=friction_per_fs,
                   init_temperature_K=temperature_K, seed=seed, log_every=log_every,
                   chunk_steps=max(log_every, (500 // log_every) * log_every), criteria=crit,
                   training=training, calibration=calibration, committee=True,
                   fix_com=len(reps[0]) > 1, progress=False, keep_frames=True)
    frames, why = [], []
    last = np.where(res.failed, res.fail_step, steps)  # the detector checks every step
    for r, a in enumerate(reps):
        stop = res.fail_reason[r] if res.failed[r] else ""
        for t in np.flatnonzero((res.frames["step"] > 0) & (res.frames["step"] < last[r])):
            f = a.copy()
            f.positions = np.asarray(res.frames["positions"][t, r], np.float64)
            frames.append(f)
            why.append(stop)
        if last[r] > 0:  # the last good step: where it stopped, or the end
            f = res.atoms[r].copy()
            f.set_momenta(None)
            frames.append(f)
            why.append(stop)
    return frames, why


def langevin(atoms: Any, temperature_K: float, timestep_fs: float, friction_per_fs: float,
             rng: np.random.Generator):
    """ASE Langevin dynamics with Maxwell–Boltzmann initial momenta and (for more than one
    atom) a fixed centre of mass (``temperature_K`` K, ``timestep_fs`` fs,
    ``friction_per_fs`` 1/fs)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    if not atoms.constraints and len(atoms) > 1:
        atoms.set_constraint(FixCom())
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                    friction=friction_per_fs / units.fs, fixcm=False,
                    rng=np.random.default_rng(rng.integers(2**31)))
