"""Adversarial geometry attacks on committee potentials.

Following Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12, 5104, 2021), a
displacement δ (Å) of a structure R is scored by

    A(δ) = mean_{atoms, xyz} Var_m[F_m(R + δ)] · exp(−Ē(R + δ)/kT) / Z,
    Z    = mean_{training set} exp(−E/kT),

with ``F_m`` the forces (eV/Å) of committee member ``m``, ``Ē`` the committee-mean
energy (eV; or eV/atom with ``per_atom``), energies shifted so that the training minimum
is 0, and kT in eV. A is in eV²/Å². The variance
term is ``forces_var_graph``, the population variance over members averaged over atoms and
xyz (:func:`jaxmat.core.committee.stats`). δ starts from N(0, σ²), is optimised by ``jax.grad``
through the committee with an optax optimiser, and is optionally clamped per component.

Many starts are attacked at once. Starts with the same atoms (numbers in the same order,
same pbc) form a group: its R structures are the graphs of one sparse batch
(:func:`jaxmat.md.forces.replica_batch`), the objective is summed over graphs, so every
structure gets its own gradient (and its own Adam moments), and all steps run in one
compiled ``lax.scan``. Neighbour lists are on-device Verlet lists
(:mod:`jaxmat.core.neighbors`) with the model's graph cutoff (``model.graph``) plus
``skin``, rebuilt inside the scan whenever an atom has moved more than ``skin / 2``; when a
list outgrows its static capacity the group is reallocated outside ``jit`` and its steps
are redone. Groups run one after another.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmat.core import committee, ensemble, graph, neighbors
from jaxmat.core.protocol import Model, Params, resolve_spec
from jaxmat.md import forces


# --------------------------------------------------------------------------- structures
def as_structure(s: Any, name: str = "structure") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(numbers, positions Å, cell Å, pbc)`` of an ASE ``Atoms`` or a :class:`graph.Record`."""
    if isinstance(s, graph.Record):
        return graph.validate_structure(s.numbers, s.positions, s.cell, s.pbc, name)
    if hasattr(s, "get_positions") and hasattr(s, "numbers"):
        return graph.validate_structure(s.numbers, s.get_positions(), np.asarray(s.cell),
                                        s.pbc, name)
    raise ValueError(f"{name}: expected ASE Atoms or jaxmat.core.graph.Record, got {type(s).__name__}")


def structure_energy(s: Any) -> float | None:
    """Label energy (eV) of an ``Atoms`` (attached calculator) or ``Record`` (targets), if any."""
    if isinstance(s, graph.Record):
        e = s.targets.get("energy")
        return None if e is None else float(e)
    calc = getattr(s, "calc", None)
    if calc is not None and "energy" in getattr(calc, "results", {}):
        return float(calc.results["energy"])
    return None


# --------------------------------------------------------------------------- Boltzmann factor
@dataclasses.dataclass(frozen=True)
class Boltzmann:
    """Boltzmann weight ``exp(−(E − e_min)/kT) / Z`` referenced to a training set.

    ``kT`` eV; ``e_min`` the training minimum (eV, or eV/atom with ``per_atom``);
    ``log_z`` = log mean_train exp(−(E − e_min)/kT); ``species`` the training elements.
    """

    kT: float
    e_min: float
    log_z: float
    per_atom: bool = False
    species: tuple[int, ...] | None = None

    @classmethod
    def from_energies(cls, energies: Any, kT: float, n_atoms: Any = None, per_atom: bool = False,
                      species: Sequence[int] | None = None) -> "Boltzmann":
        """From training energies (eV) and, for ``per_atom``, their atom counts."""
        kT = float(kT)
        if not math.isfinite(kT) or kT <= 0:
            raise ValueError(f"kT must be a positive temperature in eV, got {kT}")
        e = np.asarray(energies, dtype=np.float64).reshape(-1)
        if e.size == 0:
            raise ValueError("cannot build the Boltzmann reference from an empty training set")
        if not np.all(np.isfinite(e)):
            raise ValueError("non-finite (NaN/inf) training energy")
        if per_atom:
            if n_atoms is None:
                raise ValueError("per_atom=True needs the atom count of every training structure")
            n = np.asarray(n_atoms, dtype=np.float64).reshape(-1)
            if n.shape != e.shape or np.any(n < 1):
                raise ValueError(f"n_atoms must be positive with shape {e.shape}, got {n.shape}")
            e = e / n
        e_min = float(e.min())
        x = -(e - e_min) / kT
        log_z = float(np.log(np.mean(np.exp(x - x.max()))) + x.max())
        sp = None if species is None else tuple(sorted({int(z) for z in species}))
        return cls(kT, e_min, log_z, bool(per_atom), sp)

    @classmethod
    def from_structures(cls, structures: Sequence[Any], kT: float,
                        per_atom: bool = False) -> "Boltzmann":
        """From labelled training structures (ASE ``Atoms`` with results, or Records)."""
        if len(structures) == 0:
            raise ValueError("cannot build the Boltzmann reference from an empty training set")
        energies, n_atoms, species = [], [], set()
        for k, s in enumerate(structures):
            e = structure_energy(s)
            if e is None:
                raise ValueError(f"training structure {k} has no energy label")
            numbers = as_structure(s, f"training structure {k}")[0]
            energies.append(e)
            n_atoms.append(len(numbers))
            species.update(int(z) for z in numbers)
        return cls.from_energies(energies, kT, n_atoms, per_atom, sorted(species))

    def log_weight(self, energy: jax.Array, n_atoms: jax.Array) -> jax.Array:
        """log of the Boltzmann factor for energies ``energy`` (eV) of graphs with ``n_atoms``."""
        e = energy / jnp.maximum(n_atoms, 1.0) if self.per_atom else energy
        return -(e - self.e_min) / self.kT - self.log_z


# --------------------------------------------------------------------------- objective
def committee_terms(model: Model, params: Params, batch: graph.Batch, kT: Any, e_min: Any,
                    log_z: Any, per_atom: bool = False) -> dict[str, jax.Array]:
    """Per-graph terms of the objective (padding graphs give 0):

    ``objective`` (eV²/Å²), ``forces_var_graph`` mean over atoms and xyz of the committee
    force variance (eV²/Å²), ``energy_mean`` and ``energy_std`` (eV), ``log_weight``.
    """
    out = ensemble.apply(model, params, batch)
    st = committee.stats(out, ("energy", "forces"), batch)
    fvar = st["forces_var_graph"]
    n_at = batch.globals["n_atoms"]
    e = st["energy_mean"]
    e_ref = e / jnp.maximum(n_at, 1.0) if per_atom else e
    logw = -(e_ref - e_min) / kT - log_z
    gmask = batch.globals["mask"]
    obj = jnp.where(gmask, fvar * jnp.exp(jnp.where(gmask, logw, 0.0)), 0.0)
    return {"objective": obj, "forces_var_graph": jnp.where(gmask, fvar, 0.0),
            "energy_mean": jnp.where(gmask, e, 0.0),
            "energy_std": jnp.where(gmask, jnp.sqrt(st["energy_var"]), 0.0),
            "log_weight": jnp.where(gmask, logw, 0.0)}


def objective(model: Model, params: Params, batch: graph.Batch, reference: Boltzmann,
              delta: jax.Array | None = None) -> jax.Array:
    """Adversarial objective A (eV²/Å²) per graph, shape (G,), at positions + ``delta`` (Å)."""
    if delta is not None:
        batch = _displaced(batch, delta)
    return committee_terms(model, params, batch, reference.kT, reference.e_min,
                           reference.log_z, reference.per_atom)["objective"]


def _displaced(batch: graph.Batch, delta: jax.Array) -> graph.Batch:
    pos = batch.nodes["positions"] + delta * batch.nodes["mask"][:, None]
    return batch._replace(nodes={**batch.nodes, "positions": pos})


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Attack settings. ``lr`` and ``sigma``, ``clamp`` and ``skin`` are in Å;
    ``optimizer`` names an optax optimiser taking the learning rate (``adam``, ``sgd``, ...).
    ``check_every`` is accepted for older configuration files and has no effect (the
    on-device list is checked at every step); ``batch_size`` caps the structures per
    compiled batch;
    ``axes`` are the Cartesian axes atoms may move along (e.g. ``(0,)`` for a 1-D model)."""

    n_steps: int = 60
    lr: float = 0.01
    sigma: float = 0.01
    clamp: float | None = None
    optimizer: str = "adam"
    skin: float = 0.5
    check_every: int = 1
    batch_size: int | None = None
    axes: tuple[int, ...] = (0, 1, 2)
    seed: int = 0

    def __post_init__(self):
        if self.n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {self.n_steps}")
        if self.sigma < 0 or self.lr <= 0 or self.skin < 0 or self.check_every < 1:
            raise ValueError("attack needs sigma >= 0, lr > 0, skin >= 0 and check_every >= 1")
        if self.clamp is not None and self.clamp <= 0:
            raise ValueError(f"clamp must be positive (Å), got {self.clamp}")
        if not self.axes or not set(self.axes) <= {0, 1, 2}:
            raise ValueError(f"axes must be a non-empty subset of (0, 1, 2), got {self.axes}")
        if not hasattr(optax, self.optimizer):
            raise ValueError(f"unknown optax optimiser {self.optimizer!r}")


@dataclasses.dataclass
class AttackResult:
    """Attacked geometries and their committee statistics, one entry per start.

    ``atoms``: ASE ``Atoms`` at ``R + δ`` (no calculator; ``info`` holds the numbers below);
    ``objective``, ``forces_var_graph`` (eV²/Å²), ``energy_mean``, ``energy_std`` (eV) at the
    end;
    ``objective_start`` at ``R + δ₀``; ``history`` (n_steps, n) objective before each step;
    ``delta`` list of (n_atoms, 3) Å; ``n_rebuilds`` neighbour-list rebuilds; ``seconds``.
    """

    atoms: list
    objective: np.ndarray
    forces_var_graph: np.ndarray
    energy_mean: np.ndarray
    energy_std: np.ndarray
    objective_start: np.ndarray
    history: np.ndarray
    delta: list
    n_rebuilds: int
    seconds: float


# --------------------------------------------------------------------------- compiled pieces
@functools.lru_cache(maxsize=32)
def _compiled(model: Model, per_atom: bool, optimizer: Any, clamp: float | None,
              axes: tuple[int, ...]):
    """``run(spec, n_steps, species, pbc, params, pos0, cell, delta, nbrs, kT, e_min, log_z)``
    for R starts of one group (positions (R, N, 3) Å): the objective history (n_steps, R),
    the final δ, the final list and the committee terms at the end."""
    if isinstance(optimizer[0], str):  # (optax name, learning rate): one compile per setting
        optimizer = getattr(optax, optimizer[0])(optimizer[1])
    axis_mask = np.array([a in axes for a in range(3)], np.float32)

    def run(spec, n_steps, species, pbc, params, pos0, cell, delta, nbrs, kT, e_min, log_z):
        def terms(d, nb):
            b = forces.replica_batch(np.array(species), np.array(pbc), pos0 + d, cell, nb,
                                     spec.cutoff)
            t = committee_terms(model, params, b, kT, e_min, log_z, per_atom)
            return {k: v[:-1] for k, v in t.items()}  # drop the padding graph

        def step(carry, _):
            d, s, nb = carry
            nb = neighbors.update_all(spec, nb, pos0 + d, cell)
            grad, obj = jax.grad(lambda x: _negated(terms(x, nb)["objective"]),
                                 has_aux=True)(d)
            upd, s = optimizer.update(grad * axis_mask, s, d)
            d = optax.apply_updates(d, upd) * axis_mask
            d = d if clamp is None else jnp.clip(d, -clamp, clamp)
            return (d, s, nb), obj

        (delta, _, nbrs), hist = jax.lax.scan(step, (delta, optimizer.init(delta), nbrs),
                                              None, length=n_steps)
        nbrs = neighbors.update_all(spec, nbrs, pos0 + delta, cell)
        return hist, delta, nbrs, terms(delta, nbrs)

    return jax.jit(run, static_argnums=(0, 1, 2, 3))


def _negated(objective: jax.Array) -> tuple[jax.Array, jax.Array]:
    return -jnp.sum(objective), objective


# --------------------------------------------------------------------------- attack
def attack(
    model: Model,
    params: Params,
    starts: Sequence[Any],
    reference: Boltzmann,
    config: AttackConfig | None = None,
    optimizer: optax.GradientTransformation | None = None,
    *,
    cutoff: float | None = None,
) -> AttackResult:
    """Maximise the adversarial objective for every start geometry (ASE Atoms or Records).

    ``model`` is a potential (``apply`` gives ``energy`` eV and ``forces`` eV/Å, e.g.
    :func:`jaxmat.core.potential.potential`), ``params`` a committee (leading member axis),
    ``reference`` the training-set :class:`Boltzmann` factor. Neighbour lists use
    ``model.graph``; ``cutoff`` (Å) only for a model without one (ValueError if it
    disagrees). ``optimizer`` (an optax transformation) overrides ``config.optimizer``/``lr``.
    """
    cfg = config or AttackConfig()
    starts = list(starts)
    structs, cutoff = _checked_inputs(model, params, starts, reference, cfg, cutoff)
    t0 = time.perf_counter()
    opt = optimizer or (cfg.optimizer, float(cfg.lr))
    rng = np.random.default_rng(cfg.seed)
    deltas0 = []
    for z, *_ in structs:
        d = rng.normal(0.0, cfg.sigma, (len(z), 3)) * np.isin(np.arange(3), cfg.axes)
        deltas0.append(np.clip(d, -cfg.clamp, cfg.clamp) if cfg.clamp is not None else d)
    groups: dict[tuple, list[int]] = {}
    for k, (z, _, _, pbc) in enumerate(structs):
        groups.setdefault((tuple(z.tolist()), tuple(pbc.tolist())), []).append(k)
    bs = cfg.batch_size or len(structs)
    chunks = [idx[a:a + bs] for idx in groups.values() for a in range(0, len(idx), bs)]
    n, out, n_rebuilds = len(structs), {}, 0
    for idx in chunks:
        piece = _attack_batch(model, params, [structs[k] for k in idx],
                              [deltas0[k] for k in idx], reference, cutoff, cfg, opt)
        n_rebuilds += piece.pop("n_rebuilds")
        for key, v in piece.items():
            out.setdefault(key, [None] * n)
            for j, k in enumerate(idx):
                out[key][k] = v[..., j] if key == "history" else v[j]
    hist = np.stack(out["history"], axis=-1)
    atoms_out = [_attacked_atoms(s, z, pos + d, cell, pbc)
                 for s, (z, pos, cell, pbc), d in zip(starts, structs, out["delta"])]
    res = AttackResult(atoms_out, *(np.asarray(out[k]) for k in RESULT_TERMS),
                       hist, out["delta"], n_rebuilds, time.perf_counter() - t0)
    for k, a in enumerate(res.atoms):
        a.info.update(start_index=k, attack_objective=float(res.objective[k]),
                      forces_var_graph=float(res.forces_var_graph[k]),
                      energy_mean=float(res.energy_mean[k]), energy_std=float(res.energy_std[k]))
    return res


def _checked_inputs(model: Model, params: Params, starts: list, reference: Boltzmann,
                    cfg: AttackConfig, cutoff: float | None) -> tuple[list, float]:
    """Start structures as arrays and the graph cutoff (Å), or ValueError naming the problem."""
    if not isinstance(cfg, AttackConfig):
        raise ValueError(f"config must be an AttackConfig, got {cfg!r} (the cutoff is a "
                         "keyword argument, read from model.graph)")
    if not isinstance(reference, Boltzmann):
        raise ValueError("reference must be a Boltzmann (see Boltzmann.from_structures)")
    if reference.kT <= 0:
        raise ValueError(f"kT must be positive (eV), got {reference.kT}")
    cutoff = resolve_spec(model, cutoff).cutoff
    spec = model.graph
    if spec.max_neighbors is not None or spec.line_graph or "sparse" not in spec.layouts:
        raise ValueError(f"{model.name} reads a graph with max_neighbors={spec.max_neighbors}, "
                         f"line_graph={spec.line_graph}, layouts {list(spec.layouts)}; attacks "
                         "need a plain cutoff graph in the sparse layout")
    if not starts:
        raise ValueError("attack needs at least one start geometry (empty start set)")
    ensemble.size(params)
    structs = [as_structure(s, f"start {k}") for k, s in enumerate(starts)]
    known = None if reference.species is None else set(reference.species)
    for k, (z, *_) in enumerate(structs if known is not None else []):
        unknown = sorted(set(int(v) for v in z) - known)
        if unknown:
            raise ValueError(f"start {k}: mismatched species: elements {unknown} are not in "
                             f"the training set (species {sorted(known)})")
    return structs, cutoff


def _attacked_atoms(start: Any, numbers, positions, cell, pbc):
    from ase import Atoms

    if hasattr(start, "copy") and hasattr(start, "get_positions"):
        a = start.copy()
        a.calc = None
        a.positions = positions
        a.info = {k: v for k, v in a.info.items() if not k.startswith("attack")}
        return a
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


RESULT_TERMS = ("objective", "forces_var_graph", "energy_mean", "energy_std",
                "objective_start")


def _attack_batch(model, params, structs, deltas0, ref, cutoff, cfg, opt) -> dict:
    """Attack R starts of the same atoms in one compiled scan; on a list overflow, reallocate
    with more head-room (sized on the start and the overflowed end geometries) and redo."""
    z, _, _, pbc = structs[0]
    pos0 = np.stack([p for _, p, _, _ in structs]).astype(np.float32)
    cell = np.stack([c for _, _, c, _ in structs]).astype(np.float32)
    d0 = np.stack(deltas0).astype(np.float32)
    run = _compiled(model, ref.per_atom, opt, cfg.clamp, tuple(cfg.axes))
    sized_on, cells = pos0 + d0, cell
    for attempt in range(9):
        spec = neighbors.plan(sized_on, cells, pbc, cutoff, cfg.skin, margin=1.3 * 1.5**attempt)
        nbrs = neighbors.build_replicas(spec, pos0 + d0, cell)
        hist, delta, nbrs, end = jax.device_get(run(
            spec, cfg.n_steps, tuple(z.tolist()), tuple(pbc.tolist()), params, pos0, cell, d0,
            nbrs, np.float32(ref.kT), np.float32(ref.e_min), np.float32(ref.log_z)))
        if not np.any(nbrs.overflow):
            break
        end_pos = pos0 + np.where(np.isfinite(delta), delta, d0)
        sized_on, cells = np.concatenate([pos0 + d0, end_pos]), np.concatenate([cell, cell])
    else:
        raise RuntimeError(f"the attack's neighbour list overflowed 9 times; last sizes {spec}")
    out = {k: np.asarray(v, np.float64) for k, v in end.items() if k in RESULT_TERMS}
    out["objective_start"] = np.asarray(hist[0] if cfg.n_steps else out["objective"], float)
    return {**out, "history": hist, "delta": list(np.asarray(delta, np.float64)),
            "n_rebuilds": int(np.max(nbrs.n_builds)) - 1}

