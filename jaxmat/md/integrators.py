"""Jitted integrators over replicas: velocity-Verlet NVE, Langevin NVT (BAOAB) and NPT
(Langevin thermostat + isotropic Berendsen barostat driven by the model's stress).

Internal units are ASE's (eV, Å, amu; time in ``ase.units.fs`` per fs, velocities in
Å per ASE time unit), so states convert to and from ``ase.Atoms`` without factors.
Every array carries a leading replica axis R. A failed replica (see
:mod:`jaxmat.md.failure`) keeps its last good state from then on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from ase import units

from jaxmat.core import neighbors
from jaxmat.md import failure

ENSEMBLES = ("nve", "nvt", "npt")


class MDState(NamedTuple):
    """Replica states: ``positions``/``velocities``/``forces`` (R, N, 3), ``cell`` (R, 3, 3),
    ``energy``/``energy_std``/``forces_std_max`` (R,), ``stress`` (R, 3, 3) eV/Å³, ``nbrs``
    (stacked lists), ``key``, ``alive`` (R,), ``fail_step``/``fail_code`` (R,) int32,
    ``step`` () int32, ``topo_steps`` (R,) int32 consecutive steps with a changed covalent
    graph."""

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    cell: jax.Array
    energy: jax.Array
    energy_std: jax.Array
    forces_std_max: jax.Array
    stress: jax.Array
    nbrs: neighbors.Neighbors
    key: jax.Array
    alive: jax.Array
    fail_step: jax.Array
    fail_code: jax.Array
    step: jax.Array
    topo_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class Settings:
    """Integrator settings (hashable). ``timestep_fs`` fs, ``temperature_K`` K,
    ``friction_per_fs`` 1/fs (Langevin γ), ``pressure`` eV/Å³ (1 GPa = ``ase.units.GPa``),
    ``barostat_time_fs`` fs, ``compressibility`` Å³/eV (Berendsen β; default ~ 1/(100 GPa))."""

    ensemble: str = "nvt"
    timestep_fs: float = 0.5
    temperature_K: float = 300.0
    friction_per_fs: float = 0.01
    pressure: float = 0.0
    barostat_time_fs: float = 500.0
    compressibility: float = 1.0 / (100.0 * units.GPa)

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        for name in ("timestep_fs", "barostat_time_fs", "compressibility"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.temperature_K < 0 or self.friction_per_fs < 0:
            raise ValueError("temperature_K and friction_per_fs must be >= 0")


def kinetic_energy(velocities: jax.Array, masses: jax.Array) -> jax.Array:
    """(R,) kinetic energy in eV."""
    return 0.5 * jnp.sum(masses[None, :, None] * velocities**2, axis=(1, 2))


def degrees_of_freedom(n_free: int, fix_com: bool) -> int:
    """Degrees of freedom of ``n_free`` moving atoms: 3 n_free, less 3 when the centre of
    mass is held at rest."""
    return max(3 * n_free - (3 if fix_com else 0), 1)


def remove_com(velocities: jax.Array, masses: jax.Array) -> jax.Array:
    """Velocities (R, N, 3) with every replica's centre-of-mass velocity removed."""
    m = masses[None, :, None]
    return velocities - jnp.sum(m * velocities, axis=1, keepdims=True) / jnp.sum(masses)


def make_step(settings: Settings, forces: Callable, spec: neighbors.ListSpec,
              masses: jax.Array, criteria: failure.FailureCriteria,
              det: failure.Detector, fix_com: bool = True,
              free: jax.Array | None = None) -> Callable:
    """``step(params, state) -> state``: one step of ``settings.ensemble`` for every replica,
    with the list updated on the device and the failure detector applied. ``fix_com``:
    hold the centre of mass at rest (after the thermostat's kick and at the end of the
    step); ``free`` (N,) 0/1: atoms that move (0: fixed, as ASE's ``FixAtoms``)."""
    dt = settings.timestep_fs * units.fs
    kT = units.kB * settings.temperature_K
    inv_m = (1.0 / masses)[None, :, None]
    if free is not None:
        inv_m = inv_m * free[None, :, None]
    c1 = jnp.exp(-settings.friction_per_fs * settings.timestep_fs)
    c2 = jnp.sqrt(1.0 - c1**2)
    thermostat = settings.ensemble in ("nvt", "npt")
    com = (lambda v: remove_com(v, masses)) if fix_com else (lambda v: v)

    def evaluate(params, pos, cell, nbrs):
        nbrs = neighbors.update_all(spec, nbrs, pos, cell)
        return forces(params, pos, cell, nbrs), nbrs

    def step(params, s: MDState) -> MDState:
        key, k_noise = jax.random.split(s.key)
        v = s.velocities + 0.5 * dt * s.forces * inv_m
        x, cell = s.positions, s.cell
        if thermostat:
            x = x + 0.5 * dt * v
            noise = jax.random.normal(k_noise, v.shape, v.dtype)
            v = com(c1 * v + c2 * jnp.sqrt(kT * inv_m) * noise)
            x = x + 0.5 * dt * v
        else:
            x = x + dt * v
        if settings.ensemble == "npt":
            vol = jnp.abs(jnp.linalg.det(cell))
            p_inst = (2.0 * kinetic_energy(v, masses) / (3.0 * vol)
                      - jnp.trace(s.stress, axis1=1, axis2=2) / 3.0)
            mu = (1.0 - settings.compressibility * settings.timestep_fs
                  / settings.barostat_time_fs * (settings.pressure - p_inst)) ** (1.0 / 3.0)
            x = x * mu[:, None, None]
            cell = cell * mu[:, None, None]
        out, nbrs = evaluate(params, x, cell, s.nbrs)
        v = com(v + 0.5 * dt * out["forces"] * inv_m)
        d = edge_lengths(x, cell, nbrs)
        code, topo = failure.failure_codes(criteria, det, out, x, cell, nbrs, d, s.topo_steps,
                                           settings.timestep_fs)
        ok = s.alive & (code == 0)
        new = MDState(x, v, out["forces"], cell, out["energy"], out["energy_std"],
                      out["forces_std_max"], out["stress"], nbrs, key, ok,
                      s.fail_step, s.fail_code, s.step + 1, topo)
        kept = jax.tree_util.tree_map(lambda a, b: _where_replica(ok, a, b), new,
                                      s._replace(key=key, alive=ok, step=s.step + 1))
        newly = s.alive & (code != 0)
        return kept._replace(fail_step=jnp.where(newly, s.step + 1, s.fail_step),
                             fail_code=jnp.where(newly, code, s.fail_code))

    return step


def edge_lengths(positions: jax.Array, cell: jax.Array, nbrs: neighbors.Neighbors) -> jax.Array:
    """(R, E) lengths (Å) of every replica's listed pairs (padding entries: arbitrary)."""
    n = positions.shape[1]
    take = lambda idx: jnp.take_along_axis(positions, jnp.minimum(idx, n - 1)[..., None], 1)
    vec = (take(nbrs.senders) - take(nbrs.receivers)
           + jnp.einsum("rek,rkl->rel", nbrs.shifts.astype(positions.dtype), cell))
    return jnp.linalg.norm(vec, axis=-1)


def _where_replica(ok: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    if a.ndim == 0 or a.shape[0] != ok.shape[0]:
        return a
    return jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, b)
