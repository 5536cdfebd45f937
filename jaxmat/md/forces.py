"""Energies, forces and stresses of R replicas of one system in one model call.

The replicas are the graphs of one sparse batch (plus the padding graph of
:mod:`jaxmat.core.graph`), built on the device from positions (R, N, 3) Å, cells
(R, 3, 3) Å and stacked :class:`jaxmat.core.neighbors.Neighbors`. A committee (params with
a leading member axis) drives the dynamics by its mean and reports its spread.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxmat.core import committee as committees
from jaxmat.core import graph
from jaxmat.core.neighbors import Neighbors
from jaxmat.core.protocol import Model, Params


def replica_batch(species: np.ndarray, pbc: np.ndarray, positions: jax.Array,
                  cell: jax.Array, nbrs: Neighbors, cutoff: float | None = None) -> graph.Batch:
    """A sparse batch of the R replicas (graphs 0..R-1) and one padding graph of
    :data:`graph.PAD_NODES` nodes, as :func:`jaxmat.core.graph.batch` lays it out. Pairs of
    the list beyond ``cutoff`` (Å; the list reaches cutoff + skin) become padding edges, so
    the model sees exactly the graph that ``predict`` builds."""
    R, N = positions.shape[:2]
    E = nbrs.senders.shape[-1]
    dtype = positions.dtype
    real = R * N
    P = graph.PAD_NODES
    mask = nbrs.mask
    if cutoff is not None:
        vec = (jnp.take_along_axis(positions, jnp.minimum(nbrs.senders, N - 1)[..., None], 1)
               - jnp.take_along_axis(positions, jnp.minimum(nbrs.receivers, N - 1)[..., None], 1)
               + jnp.einsum("rek,rkl->rel", nbrs.shifts.astype(dtype), cell.astype(dtype)))
        mask = mask & (jnp.sum(vec * vec, -1) <= cutoff * cutoff)
    off = (jnp.arange(R, dtype=jnp.int32) * N)[:, None]
    senders = jnp.where(mask, nbrs.senders + off, real + P - 1).reshape(-1)
    receivers = jnp.where(mask, nbrs.receivers + off, real + P - 2).reshape(-1)
    shifts = jnp.where(mask[..., None], nbrs.shifts.astype(dtype),
                       jnp.array([1.0, 0.0, 0.0], dtype)).reshape(-1, 3)
    n_real = jnp.sum(mask, axis=-1).astype(jnp.int32)
    nodes = {
        "positions": jnp.concatenate([positions.reshape(-1, 3),
                                      jnp.asarray(graph.pad_positions(P), dtype)]),
        "species": jnp.asarray(np.concatenate([np.tile(species, R), np.zeros(P)]).astype(np.int32)),
        "graph": jnp.asarray(np.concatenate([np.repeat(np.arange(R), N), np.full(P, R)])
                             .astype(np.int32)),
        "mask": jnp.asarray(np.arange(real + P) < real),
    }
    globals_ = {
        "cell": jnp.concatenate([cell.astype(dtype),
                                 graph.PAD_DISTANCE * jnp.eye(3, dtype=dtype)[None]]),
        "pbc": jnp.asarray(np.concatenate([np.tile(pbc, (R, 1)), np.zeros((1, 3), bool)])),
        "n_atoms": jnp.asarray(np.r_[np.full(R, N), 0].astype(np.float32)).astype(dtype),
        "mask": jnp.asarray(np.arange(R + 1) < R),
    }
    return jraph.GraphsTuple(
        nodes=nodes, edges={"shifts": shifts, "mask": mask.reshape(-1)},
        senders=senders, receivers=receivers, globals=globals_,
        n_node=jnp.asarray(np.r_[np.full(R, N), P].astype(np.int32)),
        n_edge=jnp.concatenate([n_real, (R * E - jnp.sum(n_real))[None]]))


def force_fn(model: Model, species: np.ndarray, pbc: np.ndarray,
             committee: bool) -> Callable:
    """Cached :func:`make_force_fn` (one function, hence one compiled chunk, per model,
    atoms and boundary conditions)."""
    return _cached(model, tuple(int(z) for z in species), tuple(bool(p) for p in pbc),
                   bool(committee))


@functools.lru_cache(maxsize=16)
def _cached(model: Model, species: tuple, pbc: tuple, committee: bool) -> Callable:
    return make_force_fn(model, np.array(species), np.array(pbc), committee)


def make_force_fn(model: Model, species: np.ndarray, pbc: np.ndarray,
                  committee: bool) -> Callable:
    """``fn(params, positions (R, N, 3), cell (R, 3, 3), nbrs) -> dict`` with ``energy`` (R,)
    eV, ``forces`` (R, N, 3) eV/Å, ``stress`` (R, 3, 3) eV/Å³ (zeros when the model gives
    none) and the committee spread ``energy_std`` (R,) eV and ``forces_std_max`` (R,) eV/Å
    (largest per-atom force standard deviation; zeros for one model)."""
    species = np.asarray(species)
    pbc = np.asarray(pbc, bool)

    def fn(params: Params, positions: jax.Array, cell: jax.Array, nbrs: Neighbors) -> dict:
        R, N = positions.shape[:2]
        batch = replica_batch(species, pbc, positions, cell, nbrs, model.graph.cutoff)
        if committee:
            outs = committees.apply(model, params, batch)
            forces_m = outs["forces"][:, : R * N].reshape(-1, R, N, 3)
            energy_m = outs["energy"][:, :R]
            forces = jnp.mean(forces_m, 0)
            energy = jnp.mean(energy_m, 0)
            f_std = jnp.sqrt(jnp.sum(jnp.var(forces_m, 0), -1))  # (R, N)
            res = {"energy_std": jnp.std(energy_m, 0), "forces_std_max": jnp.max(f_std, -1)}
            stress = jnp.mean(outs["stress"][:, :R], 0) if "stress" in outs else None
        else:
            out = model.apply(params, batch)
            forces = out["forces"][: R * N].reshape(R, N, 3)
            energy = out["energy"][:R]
            res = {"energy_std": jnp.zeros(R, energy.dtype),
                   "forces_std_max": jnp.zeros(R, energy.dtype)}
            stress = out["stress"][:R] if "stress" in out else None
        res.update(energy=energy, forces=forces,
                   stress=jnp.zeros((R, 3, 3), energy.dtype) if stress is None else stress)
        return res

    return fn
