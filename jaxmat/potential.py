"""Interatomic potentials: energy model -> energy, forces and stress by ``jax.grad``.

Forces are ``-dE/dR`` (eV/Å). Stress is ``(1/V) dE/dε`` (eV/Å³, ASE's convention) for
a homogeneous strain ε applied to positions and cell together; it is zero for
non-periodic graphs. Both come from the same ``apply`` as the energy.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat import graph
from jaxmat.protocol import Model, Outputs, Params


def strained(batch: graph.Batch, positions: jax.Array, strain: jax.Array) -> graph.Batch:
    """Batch with positions replaced and every graph deformed by ``I + strain[g]``."""
    eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    pos = positions + jnp.einsum("ni,nij->nj", positions, eps[batch.nodes["graph"]])
    cell = batch.globals["cell"] + jnp.einsum("gij,gjk->gik", batch.globals["cell"], eps)
    return batch._replace(nodes={**batch.nodes, "positions": pos},
                          globals={**batch.globals, "cell": cell})


def potential(energy_model: Model, stress: bool = True) -> Model:
    """Turn a model whose ``apply`` gives ``"energy"`` (G,) into a potential giving
    ``energy`` (eV), ``forces`` (eV/Å) and, if ``stress``, ``stress`` (eV/Å³).
    A training-mode ``apply_train`` (dropout) of the energy model is kept, with its derivatives."""

    def apply(params: Params, batch: graph.Batch, key: jax.Array | None = None) -> Outputs:
        pos = batch.nodes["positions"]
        g = graph.n_graphs(batch)
        strain = jnp.zeros((g, 3, 3), pos.dtype)

        def total(p, s):
            b = (strained(batch, p, s) if stress else
                 batch._replace(nodes={**batch.nodes, "positions": p}))
            out = (energy_model.apply(params, b) if key is None else
                   energy_model.apply_train(params, b, key))
            return jnp.sum(out["energy"] * batch.globals["mask"]), out

        (dpos, dstrain), out = jax.grad(total, argnums=(0, 1), has_aux=True)(pos, strain)
        out = dict(out)
        out["forces"] = -dpos * batch.nodes["mask"][:, None]
        if stress:
            cell = batch.globals["cell"]
            vol = jnp.abs(jnp.linalg.det(cell))
            periodic = jnp.any(batch.globals["pbc"], axis=-1) & (vol > 0)
            out["stress"] = jnp.where(periodic[:, None, None],
                                      dstrain / jnp.where(periodic, vol, 1.0)[:, None, None], 0.0)
        return out

    apply_train = apply if energy_model.apply_train is not None else None
    return Model(energy_model.init, apply, apply_train, energy_model.name)


def fit_energy_stats(
    numbers: Sequence[np.ndarray], energies: Sequence[float], max_z: int = 118
) -> tuple[np.ndarray, float]:
    """Per-element reference energies (eV) by least squares on composition counts,
    and the standard deviation of the per-atom residual (eV/atom) as an output scale."""
    if len(numbers) == 0:
        raise ValueError("cannot fit reference energies on an empty training set")
    counts = np.zeros((len(numbers), max_z + 1))
    for k, z in enumerate(numbers):
        np.add.at(counts[k], np.asarray(z), 1)
    e = np.asarray(energies, dtype=np.float64)
    present = counts.sum(0) > 0
    coef, *_ = np.linalg.lstsq(counts[:, present], e, rcond=None)
    refs = np.zeros(max_z + 1)
    refs[present] = coef
    resid = (e - counts @ refs) / counts.sum(1)
    scale = float(np.std(resid)) if len(e) > 1 else 1.0
    return refs, max(scale, 1e-3)
