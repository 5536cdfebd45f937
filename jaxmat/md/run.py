"""The MD driver: ASE Atoms in, many steps per compiled call, Atoms and logs out.

:func:`simulate` runs R replicas of one system (same atoms, any positions, velocities and
cells) with the integrators of :mod:`jaxmat.md.integrators`. Steps run in chunks, each one
``lax.scan`` compiled once; the log (energies, temperature, committee σ, volume) is
recorded every ``log_every`` steps inside the scan, trajectory frames are written between
chunks (outside ``jit``), and a neighbour-list overflow reallocates the lists and reruns
the chunk from its start.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units

from jaxmat.core import calibrate, graph, neighbors
from jaxmat.core.committee import is_committee
from jaxmat.core.protocol import Model, Params, resolve_spec
from jaxmat.md import failure
from jaxmat.md.forces import force_fn
from jaxmat.md.integrators import (MDState, Settings, degrees_of_freedom, edge_lengths,
                                   kinetic_energy, make_step)

LOG_KEYS = ("energy", "kinetic", "temperature", "energy_std", "forces_std_max", "volume",
            "alive", "topology_steps")


@dataclasses.dataclass
class MDResult:
    """What a run gives back. ``log[k]`` (T, R) arrays at ``log_steps`` (T,; step 0 first): ``energy``
    (potential, eV), ``kinetic`` eV, ``temperature`` K (centre-of-mass motion and fixed
    atoms excluded: ``dof`` degrees of freedom), ``energy_std`` eV, ``forces_std_max`` eV/Å
    (raw committee σ), ``volume`` Å³ (0 for molecules), ``alive``, ``topology_steps``
    (consecutive steps with a changed covalent graph). ``failed`` (R,), ``fail_step`` (R,)
    (-1 if fine), ``fail_reason`` (R,) str, ``fail_code`` (R,) int (``REASONS``).
    ``atoms``: final replicas with velocities (a failed one at its last good step).
    ``frames``: the trajectory frames kept in memory (``step`` (F,), ``positions``
    (F, R, N, 3), ``cell``, ``energy`` (F, R), ``forces`` (F, R, N, 3)) when frames were
    asked for. ``criteria``: the criteria applied, ``energy_range`` eV/atom and ``scales``
    (energy, forces σ calibration maps ``(scale, power, knee)``) they used, ``notes``: what
    was switched off and why.
    ``seconds``: wall time of the steps (compiles included), ``n_builds`` device list
    builds, ``n_reallocations``."""

    atoms: list[Atoms]
    log_steps: np.ndarray
    log: dict[str, np.ndarray]
    failed: np.ndarray
    fail_step: np.ndarray
    fail_reason: list[str]
    steps: int
    seconds: float
    n_builds: int
    n_reallocations: int
    fail_code: np.ndarray = None
    timestep_fs: float = 0.5
    dof: int = 0
    criteria: failure.FailureCriteria | None = None
    energy_range: tuple[float, float] | None = None
    scales: tuple = (calibrate.IDENTITY, calibrate.IDENTITY)
    notes: list[str] = dataclasses.field(default_factory=list)
    frames: dict[str, np.ndarray] | None = None

    @property
    def replica_steps_per_s(self) -> float:
        return len(self.atoms) * self.steps / max(self.seconds, 1e-12)

    @property
    def success_fraction(self) -> float:
        return float(1.0 - np.mean(self.failed))

    def report(self) -> dict:
        """The failure report (JSON-serialisable): criteria applied and off, the data they
        used, and per replica its status, reason, code, step and time (fs)."""
        crit = self.criteria or failure.FailureCriteria()
        reps = [{"replica": r, "status": "failed" if f else "ok", "reason": self.fail_reason[r],
                 "code": int(self.fail_code[r]) if self.fail_code is not None else 0,
                 "step": int(self.fail_step[r]),
                 "time_fs": float(self.fail_step[r] * self.timestep_fs) if f else None}
                for r, f in enumerate(self.failed)]
        return {"steps": int(self.steps), "timestep_fs": self.timestep_fs,
                "n_replicas": len(self.atoms), "n_failed": int(np.sum(self.failed)),
                "criteria": dataclasses.asdict(crit), "active": crit.active(),
                "off": [n for n in failure.CRITERIA if n not in crit.active()],
                "notes": list(self.notes), "reasons": dict(failure.REASONS),
                "energy_range_eV_per_atom": (list(self.energy_range)
                                             if self.energy_range is not None else None),
                "sigma_calibration": {t: calibrate.map_entry(m)
                                      for t, m in zip(("energy", "forces"), self.scales)},
                "degrees_of_freedom": self.dof, "replicas": reps}

    def summary(self) -> str:
        """A table, one row per replica: status, reason, step and time (ps)."""
        lines = [f"{'replica':>7}  {'status':6}  {'step':>8}  {'time ps':>8}  reason"]
        for r, f in enumerate(self.failed):
            step = int(self.fail_step[r]) if f else self.steps
            lines.append(f"{r:>7}  {'failed' if f else 'ok':6}  {step:>8}  "
                         f"{step * self.timestep_fs / 1000:>8.3f}  {self.fail_reason[r]}")
        lines.append(f"{int(np.sum(~self.failed))}/{len(self.failed)} replicas ran "
                     f"{self.steps} steps without failing")
        return "\n".join(lines)


def _replicas(atoms: Atoms | Sequence[Atoms], replicas: int | None) -> list[Atoms]:
    if isinstance(atoms, Atoms):
        return [atoms.copy() for _ in range(replicas or 1)]
    atoms = [a.copy() for a in atoms]
    if not atoms:
        raise ValueError("no structures given")
    if replicas not in (None, len(atoms)):
        raise ValueError(f"replicas={replicas} but {len(atoms)} structures were given")
    z0, p0 = atoms[0].numbers, atoms[0].pbc
    for k, a in enumerate(atoms):
        if not (np.array_equal(a.numbers, z0) and np.array_equal(a.pbc, p0)):
            raise ValueError(f"replica {k} ({a.get_chemical_formula()}, pbc {a.pbc.tolist()}) "
                             f"differs from replica 0 ({atoms[0].get_chemical_formula()}, pbc "
                             f"{p0.tolist()}); replicas must be the same atoms in the same order")
    return atoms


def _velocities(atoms: list[Atoms], temperature_K: float | None, seed: int,
                remove_com: bool) -> np.ndarray:
    """Given velocities, or Maxwell–Boltzmann draws at ``temperature_K`` (one stream per
    replica), in ASE units (Å per ASE time unit); with ``remove_com`` the centre-of-mass
    velocity is removed from either."""
    out = []
    rng = np.random.default_rng(seed)
    for a in atoms:
        m = a.get_masses()
        if temperature_K is None:
            v = a.get_velocities()
        else:
            v = rng.normal(size=(len(a), 3)) * np.sqrt(units.kB * temperature_K / m)[:, None]
        if remove_com and len(a) > 1:
            v = v - (m[:, None] * v).sum(0) / m.sum()
        out.append(v)
    return np.asarray(out)


def simulate(model: Model, params: Params, atoms: Atoms | Sequence[Atoms], steps: int, *,
             ensemble: str = "nvt", timestep_fs: float = 0.5, temperature_K: float = 300.0,
             friction_per_fs: float = 0.01, pressure: float = 0.0,
             barostat_time_fs: float = 500.0, compressibility: float | None = None,
             replicas: int | None = None, init_temperature_K: float | None | str = "auto",
             seed: int = 0, log_every: int = 10, chunk_steps: int = 1000,
             trajectory: str | None = None, traj_every: int | None = None,
             skin: float = 0.5, criteria: failure.FailureCriteria = failure.FailureCriteria(),
             training: dict | None = None, calibration: dict | None = None,
             committee: bool | None = None, fix_com: bool | None = None,
             progress: bool | None = None, progress_every_s: float = 30.0,
             callback: Callable[[np.ndarray, dict], None] | None = None,
             keep_frames: bool = False, dtype: Any = jnp.float32) -> MDResult:
    """Run ``steps`` MD steps of ``timestep_fs`` fs for R replicas of one system.

    ``model`` is a potential (``energy``/``forces``/``stress``, e.g. a bundle's ``model``);
    ``params`` a model's or a committee's (mean forces drive, σ logged). ``atoms``: one
    Atoms (copied ``replicas`` times) or a list (one per replica). ``ensemble``: ``"nve"``
    (velocity Verlet), ``"nvt"`` (Langevin, ``friction_per_fs``), ``"npt"`` (Langevin +
    Berendsen, ``pressure`` eV/Å³, ``barostat_time_fs``, ``compressibility`` Å³/eV).
    Initial velocities: Maxwell–Boltzmann at ``init_temperature_K`` (``"auto"``: at
    ``temperature_K`` unless every replica carries velocities; ``None``: the Atoms'
    velocities). Frames every ``traj_every`` steps (a multiple of ``log_every``) go to
    ``trajectory`` (any ASE-writable name; with several replicas ``name_r{k}.ext``).
    ``criteria``: the failure detector (:class:`jaxmat.md.failure.FailureCriteria`, on by
    default); ``training`` (a bundle's ``training`` summary: energy per atom range, eV/atom)
    and ``calibration`` (a bundle's σ calibration) feed its energy-range and committee-σ
    criteria, which are off, with a warning, when these are missing.
    ``fix_com``: hold the centre of mass at rest and count 3N − 3 degrees of freedom
    (default: yes unless atoms are fixed; ASE ``FixAtoms``/``FixCom`` constraints are
    honoured, others raise). Progress: a bar on a terminal, else one line every
    ``progress_every_s`` s; ``callback(steps (T,), record)`` after every chunk with its log
    rows (``record[k]`` (T, R)). ``keep_frames``: keep the trajectory frames in
    ``MDResult.frames`` (for :func:`jaxmat.md.audit.audit`).
    """
    if steps < 1 or log_every < 1 or chunk_steps < 1:
        raise ValueError(f"steps, log_every and chunk_steps must be >= 1, got {steps}, "
                         f"{log_every}, {chunk_steps}")
    traj_every = traj_every or (log_every if trajectory else None)
    if traj_every is not None and traj_every % log_every:
        raise ValueError(f"traj_every={traj_every} must be a multiple of log_every={log_every}")
    settings = Settings(ensemble, timestep_fs, temperature_K, friction_per_fs, pressure,
                        barostat_time_fs, **({} if compressibility is None else
                                             {"compressibility": compressibility}))
    reps = _replicas(atoms, replicas)
    for k, a in enumerate(reps):
        graph.validate_structure(a.numbers, a.positions, a.cell, a.pbc, f"replica {k}")
        if not np.all(np.isfinite(a.get_velocities())):
            raise ValueError(f"replica {k}: non-finite velocities")
    pbc = reps[0].pbc.copy()
    if settings.ensemble == "npt" and not pbc.all():
        raise ValueError(f"NPT needs a periodic cell in all directions, got pbc {pbc.tolist()}")
    if "sparse" not in model.graph.layouts or model.graph.max_neighbors is not None:
        raise ValueError(f"model {model.name!r}: MD needs a cutoff graph in the sparse layout; "
                         f"it declares layouts {list(model.graph.layouts)}, max_neighbors "
                         f"{model.graph.max_neighbors}")
    cutoff = resolve_spec(model).cutoff
    free, fix_com = _constraints(reps[0], fix_com)
    if init_temperature_K == "auto":
        given = all(np.any(a.get_velocities() != 0) for a in reps)
        init_temperature_K = None if given else temperature_K
    pos0 = np.stack([a.positions for a in reps])
    cell0 = np.stack([np.asarray(a.cell) for a in reps])
    species = reps[0].numbers
    masses = jnp.asarray(reps[0].get_masses(), dtype)
    vel0 = _velocities(reps, init_temperature_K, seed, fix_com) * free[None, :, None]
    dof = degrees_of_freedom(int(free.sum()), fix_com)

    spec = neighbors.plan(pos0, cell0, pbc, cutoff, skin)
    nbrs = neighbors.build_replicas(spec, pos0, cell0)
    if committee is None:
        example = graph.batch(graph.records(reps[:1], model, labels=False))
        committee = is_committee(model, params, example)
    forces = force_fn(model, species, pbc, committee)
    criteria, energy_range, scales, notes = failure.resolve(
        criteria, reps[0].get_chemical_formula(), committee, training, calibration)
    if criteria.topology_time_fs is not None and cutoff + skin < _bond_reach(species, criteria):
        notes.append(f"the neighbour list (cutoff + skin {cutoff + skin:.2f} Å) is shorter than "
                     f"the longest covalent bond ({_bond_reach(species, criteria):.2f} Å): "
                     "criterion topology is off")
        criteria = criteria.without("topology")
    for note in notes:
        warnings.warn(f"jaxmat.md: {note}", stacklevel=2)
    fr = None if free.all() else jnp.asarray(free, dtype)
    pos_d, cell_d = jnp.asarray(pos0, dtype), jnp.asarray(cell0, dtype)
    det = failure.detector(criteria, species, pos0[0], cell0[0], pbc, nbrs, edge_lengths(
        pos_d, cell_d, nbrs), energy_range, scales, dtype)
    state = _initial_state(forces, params, pos0, vel0, cell0, nbrs, seed, dtype)
    state = _check_start(state, criteria, det, settings.timestep_fs)

    keep = bool(traj_every) or keep_frames
    rec0 = jax.device_get(_record(state, masses, dof, keep))
    log_steps, logs = [0], {k: [np.asarray(rec0[k])[None]] for k in LOG_KEYS}
    frames = [(0, rec0)] if keep else []
    traj_every = traj_every or (log_every if keep_frames else None)
    n_realloc, done, t0 = 0, 0, time.perf_counter()
    bar = _Progress(steps, progress, progress_every_s)
    if callback is not None:
        callback(np.array([0]), {k: np.asarray(rec0[k])[None] for k in LOG_KEYS})
    while done < steps:
        n = min(chunk_steps, steps - done)
        n = max(log_every, n - n % log_every) if n >= log_every else n
        run_chunk = _chunk_fn(settings, forces, spec, masses, criteria, det, n,
                              min(log_every, n), keep, dof, fix_com, fr)
        new, rec = run_chunk(params, state)
        if bool(jnp.any(new.nbrs.overflow)):
            n_realloc += 1
            if n_realloc > 8:
                raise RuntimeError("the neighbour list overflowed 8 times in a row; "
                                   f"last sizes {spec}")
            spec = neighbors.plan(np.asarray(state.positions), np.asarray(state.cell), pbc,
                                  cutoff, skin, margin=1.3 * 1.5**n_realloc,
                                  cell_margin=1.0 + 0.1 * n_realloc)
            state = state._replace(nbrs=neighbors.build_replicas(spec, np.asarray(state.positions),
                                                   np.asarray(state.cell)))
            continue
        state = new
        rec = jax.device_get(rec)
        steps_here = done + np.arange(1, len(rec["energy"]) + 1) * min(log_every, n)
        log_steps.extend(steps_here.tolist())
        for k in LOG_KEYS:
            logs[k].append(rec[k])
        if traj_every:
            for t, s_ in enumerate(steps_here):
                if s_ % traj_every == 0:
                    frames.append((int(s_), {k: v[t] for k, v in rec.items()}))
        if callback is not None:
            callback(steps_here, {k: rec[k] for k in LOG_KEYS})
        done += n
        bar.update(n, state)
        if not bool(jnp.any(state.alive)):
            break
    bar.close()
    seconds = time.perf_counter() - t0
    if trajectory:
        _write_frames(trajectory, reps, frames, timestep_fs)
    log = {k: np.concatenate(v) for k, v in logs.items()}
    res = _result(reps, state, np.asarray(log_steps), log, done, seconds, n_realloc)
    res.timestep_fs, res.dof, res.criteria = timestep_fs, dof, criteria
    res.energy_range, res.scales, res.notes = energy_range, scales, notes
    if keep_frames:
        res.frames = {"step": np.array([f[0] for f in frames])}
        for k in ("positions", "cell", "energy", "forces"):
            res.frames[k] = np.stack([np.asarray(f[1][k]) for f in frames])
    return res


def _bond_reach(species: np.ndarray, criteria: failure.FailureCriteria) -> float:
    from ase.data import covalent_radii
    return float(criteria.bond_factor * 2 * covalent_radii[np.asarray(species)].max())


def _constraints(atoms: Atoms, fix_com: bool | None) -> tuple[np.ndarray, bool]:
    """(N,) 0/1 moving atoms and whether the centre of mass is held, from ASE constraints
    (``FixAtoms``, ``FixCom``; others raise) and ``fix_com`` (None: unless atoms are fixed)."""
    from ase.constraints import FixAtoms, FixCom
    free = np.ones(len(atoms))
    has_fixcom = False
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            free[c.get_indices()] = 0.0
        elif isinstance(c, FixCom):
            has_fixcom = True
        else:
            raise ValueError(f"jaxmat.md supports FixAtoms and FixCom constraints, got "
                             f"{type(c).__name__}")
    if free.sum() == 0:
        raise ValueError("every atom is fixed (FixAtoms): nothing can move")
    if fix_com is None:
        fix_com = has_fixcom or bool(free.all())
    if fix_com and not free.all():
        raise ValueError(f"fix_com with {int((free == 0).sum())} fixed atoms (FixAtoms): the "
                         "centre of mass of the rest is not conserved; pass fix_com=False")
    return free, bool(fix_com)


def _initial_state(forces, params, pos0, vel0, cell0, nbrs, seed, dtype) -> MDState:
    pos = jnp.asarray(pos0, dtype)
    cell = jnp.asarray(cell0, dtype)
    out = jax.jit(forces)(params, pos, cell, nbrs)
    R = len(pos0)
    return MDState(pos, jnp.asarray(vel0, dtype), out["forces"], cell, out["energy"],
                   out["energy_std"], out["forces_std_max"], out["stress"], nbrs,
                   jax.random.key(seed), jnp.ones(R, bool), jnp.full(R, -1, jnp.int32),
                   jnp.zeros(R, jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros(R, jnp.int32))


def _check_start(state: MDState, criteria, det, dt_fs) -> MDState:
    """Replicas that start outside physical space fail at step 0."""
    out = {"energy": state.energy, "forces": state.forces, "energy_std": state.energy_std,
           "forces_std_max": state.forces_std_max}
    d = edge_lengths(state.positions, state.cell, state.nbrs)
    code, topo = failure.failure_codes(criteria, det, out, state.positions, state.cell,
                                       state.nbrs, d, state.topo_steps, dt_fs)
    return state._replace(alive=code == 0, fail_step=jnp.where(code != 0, 0, -1),
                          fail_code=code, topo_steps=topo)


def _record(s: MDState, masses: jax.Array, dof: int, frames: bool) -> dict:
    """One log record (and frame) of every replica; temperature over ``dof`` degrees of
    freedom."""
    kin = kinetic_energy(s.velocities, masses)
    rec = {"energy": s.energy, "kinetic": kin, "temperature": 2 * kin / (dof * units.kB),
           "energy_std": s.energy_std, "forces_std_max": s.forces_std_max,
           "volume": jnp.abs(jnp.linalg.det(s.cell)), "alive": s.alive,
           "topology_steps": s.topo_steps}
    if frames:
        rec.update(positions=s.positions, cell=s.cell, forces=s.forces)
    return rec


_CHUNKS: dict = {}


def _chunk_fn(settings, forces, spec, masses, criteria, det, n, log_every, frames, dof,
              fix_com, free):
    """The compiled ``n``-step chunk (cached per settings, sizes and model function)."""
    arrays = (masses,) + tuple(jax.tree_util.tree_leaves(det)) + (() if free is None else (free,))
    key = (settings, id(forces), spec, criteria, n, log_every, frames, dof, fix_com,
           free is None, tuple(np.asarray(a).tobytes() for a in arrays))
    if key in _CHUNKS:
        return _CHUNKS[key]
    step = make_step(settings, forces, spec, masses, criteria, det, fix_com, free)

    def inner(params, state):
        return jax.lax.scan(lambda s, _: (step(params, s), None), state, None, log_every)[0]

    @jax.jit
    def chunk(params, state):
        def outer(s, _):
            s = inner(params, s)
            return s, _record(s, masses, dof, frames)
        return jax.lax.scan(outer, state, None, n // log_every)

    if len(_CHUNKS) > 32:
        _CHUNKS.clear()
    _CHUNKS[key] = chunk
    return chunk


class _Progress:
    """A tqdm bar on a terminal; otherwise one plain line every ``every_s`` s and at the
    end (steps done, replicas alive, speed)."""

    def __init__(self, total: int, show: bool | None, every_s: float = 30.0):
        tty = sys.stderr.isatty()
        self.show = tty if show is None else show
        self.tty, self.total, self.done, self.every_s = tty, total, 0, every_s
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if self.show and tty:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, unit="step", leave=False)

    def update(self, n: int, state: MDState) -> None:
        self.done += n
        if not self.show:
            return
        alive = int(jnp.sum(state.alive))
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(alive=alive)
        elif time.perf_counter() - self.last >= self.every_s or self.done >= self.total:
            self.last = time.perf_counter()
            print(f"md: step {self.done}/{self.total}, {alive}/{state.alive.shape[0]} replicas "
                  f"alive, {self.done / (self.last - self.t0):.1f} steps/s", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_frames(path: str, reps: list[Atoms], frames: list, timestep_fs: float) -> None:
    """Frames with the step, time (fs), potential energy (eV, also as the frame's energy),
    temperature (K) and committee σ in ``info`` and the forces (eV/Å); one file per
    replica when R > 1."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    root, ext = os.path.splitext(path)
    for r, a in enumerate(reps):
        out = []
        for step, rec in frames:
            f = Atoms(a.numbers, positions=np.asarray(rec["positions"][r], np.float64),
                      cell=np.asarray(rec["cell"][r], np.float64), pbc=a.pbc)
            f.info = {"step": step, "time_fs": step * timestep_fs,
                      "temperature_K": float(rec["temperature"][r]),
                      "energy_std_eV": float(rec["energy_std"][r]),
                      "forces_std_max_eV_per_A": float(rec["forces_std_max"][r]),
                      "alive": bool(rec["alive"][r])}
            f.calc = SinglePointCalculator(f, energy=float(rec["energy"][r]),
                                           forces=np.asarray(rec["forces"][r], np.float64))
            out.append(f)
        write(path if len(reps) == 1 else f"{root}_r{r}{ext}", out)


def _result(reps, state: MDState, log_steps, log, done, seconds, n_realloc) -> MDResult:
    s = jax.device_get(state)
    out = []
    for r, a in enumerate(reps):
        b = a.copy()
        b.positions = np.asarray(s.positions[r], np.float64)
        b.cell = np.asarray(s.cell[r], np.float64)
        b.set_velocities(np.asarray(s.velocities[r], np.float64))
        out.append(b)
    failed = ~np.asarray(s.alive)
    return MDResult(out, log_steps, log, failed,
                    np.where(failed, np.asarray(s.fail_step), -1),
                    [failure.REASONS[int(c)] for c in np.asarray(s.fail_code)], done, seconds,
                    int(np.max(np.asarray(s.nbrs.n_builds))), n_realloc,
                    np.where(failed, np.asarray(s.fail_code), 0))
