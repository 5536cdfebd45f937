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

from jaxmat.core import graph
from jaxmat.core.protocol import Model, Outputs, Params
from jaxmat.core.bundle import register


def strained(batch: graph.Batch, positions: jax.Array, strain: jax.Array) -> graph.Batch:
    """Batch with positions replaced and every graph deformed by ``I + strain[g]``."""
    eps = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    pos = positions + jnp.einsum("ni,nij->nj", positions, eps[batch.nodes["graph"]])
    cell = batch.globals["cell"] + jnp.einsum("gij,gjk->gik", batch.globals["cell"], eps)
    return batch._replace(nodes={**batch.nodes, "positions": pos},
                          globals={**batch.globals, "cell": cell})


def potential(energy_model: Model, stress: bool = True,
              chunk_slots: int | None | str = "auto") -> Model:
    """Turn a model whose ``apply`` gives ``"energy"`` (G,) into a potential giving
    ``energy`` (eV), ``forces`` (eV/Å) and, if ``stress``, ``stress`` (eV/Å³).
    A training-mode ``apply_train`` (dropout) of the energy model is kept, with its derivatives.

    Dense batches (small molecules, :mod:`jaxmat.core.graph`) are non-periodic: their stress
    is zero and no strain derivative is taken. They are evaluated in equal chunks of
    graphs with at most ``chunk_slots`` pair slots each (``None``: one piece; ``"auto"``:
    2048 on CPU, one piece on accelerators) by ``lax.map`` with rematerialisation, so that
    the edge arrays of the energy, the forces and their parameter gradients stay in cache.
    Molecules are independent, so chunking changes no result; the energy model's outputs
    must be per graph or per node.
    """
    if chunk_slots == "auto":
        chunk_slots = 2048 if jax.default_backend() == "cpu" else None
    elif chunk_slots is not None and (isinstance(chunk_slots, str) or chunk_slots < 1):
        raise ValueError(f"chunk_slots must be a positive int, None or 'auto', got {chunk_slots!r}")

    def single(params: Params, batch: graph.Batch, key: jax.Array | None,
               with_stress: bool) -> Outputs:
        pos = batch.nodes["positions"]
        g = graph.n_graphs(batch)
        strain = jnp.zeros((g, 3, 3), pos.dtype)

        def total(p, s):
            b = (strained(batch, p, s) if with_stress else
                 batch._replace(nodes={**batch.nodes, "positions": p}))
            out = (energy_model.apply(params, b) if key is None else
                   energy_model.apply_train(params, b, key))
            return jnp.sum(out["energy"] * batch.globals["mask"]), out

        (dpos, dstrain), out = jax.grad(total, argnums=(0, 1), has_aux=True)(pos, strain)
        out = dict(out)
        out["forces"] = -dpos * batch.nodes["mask"][:, None]
        if with_stress:
            cell = batch.globals["cell"]
            vol = jnp.abs(jnp.linalg.det(cell))
            periodic = jnp.any(batch.globals["pbc"], axis=-1) & (vol > 0)
            out["stress"] = jnp.where(periodic[:, None, None],
                                      dstrain / jnp.where(periodic, vol, 1.0)[:, None, None], 0.0)
        return out

    def apply(params: Params, batch: graph.Batch, key: jax.Array | None = None) -> Outputs:
        if not graph.is_dense(batch):
            return single(params, batch, key, stress)
        n_chunks = graph.dense_chunks(batch, chunk_slots) if chunk_slots else 1
        if n_chunks > 1:
            if key is None:
                piece = jax.checkpoint(lambda b: single(params, b, None, False))
                chunks = graph.split_dense(batch, n_chunks)
            else:  # one rng stream per chunk
                piece = jax.checkpoint(lambda bk: single(params, bk[0], bk[1], False))
                chunks = (graph.split_dense(batch, n_chunks), jax.random.split(key, n_chunks))
            out = graph.merge_chunks(jax.lax.map(piece, chunks))
        else:
            out = single(params, batch, key, False)
        if stress:
            pos = batch.nodes["positions"]
            out["stress"] = jnp.zeros((graph.n_graphs(batch), 3, 3), pos.dtype)
        return out

    apply_train = apply if energy_model.apply_train is not None else None
    return Model(energy_model.init, apply, apply_train, energy_model.name, energy_model.graph,
                 {"builder": "potential", "model": energy_model, "stress": stress})


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


def energy_stats(records: Sequence[graph.Record], max_z: int = 118) -> tuple[np.ndarray, float]:
    """The one recipe for a potential's output statistics from its *training* records:
    per-element reference energies (eV, least squares on composition,
    :func:`fit_energy_stats`) and the scale of the atomic energies: the force RMS (eV/Å,
    the typical size of an atomic energy's gradient) when the records carry forces, else
    the per-atom residual energy spread (eV/atom). Use as ``cfg.with_stats(*energy_stats(train))``."""
    if not records:
        raise ValueError("cannot fit energy statistics on an empty training set")
    missing = [k for k, r in enumerate(records) if "energy" not in r.targets]
    if missing:
        raise ValueError(f"records {missing[:5]} carry no 'energy' label; keys found: "
                         f"{sorted(records[missing[0]].targets)}")
    refs, resid_scale = fit_energy_stats([r.numbers for r in records],
                                         [r.targets["energy"] for r in records], max_z)
    forces = [r.node_targets["forces"] for r in records if "forces" in r.node_targets]
    if not forces:
        return refs, resid_scale
    return refs, max(float(np.sqrt(np.mean(np.concatenate(forces) ** 2))), 1e-3)



E0_MODES = ("fit", "average")


def reference_energies(records: Sequence[graph.Record], e0: str | dict = "fit",
                       max_z: int = 118) -> tuple[np.ndarray, float]:
    """Per-element reference energies E0 (eV, index = Z) and the per-atom shift (eV/atom)
    left for the model, from the *training* records:

    * ``"fit"``: least squares of the energies on composition counts (MACE's ``E0s``
      fitted); where the compositions do not determine every element's share (e.g. one
      molecule), the solution closest to the mean energy per atom is taken, so the E0s
      stay physical (a plain minimum-norm fit gave H -45 eV on ethanol);
    * ``"average"``: every element gets the mean energy per atom of the training set
      (nequip's per-atom mean), well defined for any data;
    * ``{"H": -13.6, ...}``: given values (e.g. isolated-atom energies); every element of
      the data needs one (``ValueError`` naming the missing ones), extra elements warn.
      The shift is then the mean per-atom residual, so the model starts centred.
    """
    from ase.data import atomic_numbers, chemical_symbols

    if not records:
        raise ValueError("cannot fit reference energies on an empty training set")
    numbers = [np.asarray(r.numbers) for r in records]
    energies = np.array([r.targets["energy"] for r in records], dtype=np.float64)
    n_atoms = np.array([len(z) for z in numbers], dtype=np.float64)
    if isinstance(e0, str):
        if e0 not in E0_MODES:
            raise ValueError(f"reference_energies must be one of {list(E0_MODES)} or a table "
                             f"of eV per element, got {e0!r}")
        mean = float(np.sum(energies) / np.sum(n_atoms))
        refs = np.zeros(max_z + 1)
        refs[np.unique(np.concatenate(numbers))] = mean
        if e0 == "fit":  # least squares; the minimum-norm part measured from the mean
            refs = refs + fit_energy_stats(numbers, energies - mean * n_atoms, max_z)[0]
        return refs, 0.0
    if not isinstance(e0, dict) or not e0:
        raise ValueError(f"reference_energies must be 'fit', 'average' or a non-empty table "
                         f"of eV per element symbol, got {e0!r}")
    unknown = [k for k in e0 if k not in atomic_numbers]
    bad = [k for k, v in e0.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not np.isfinite(v)]
    if unknown or bad:
        raise ValueError(f"reference_energies: {unknown or bad} are not element symbols with "
                         "finite energies in eV")
    present = {chemical_symbols[int(z)] for z in np.unique(np.concatenate(numbers))}
    missing = sorted(present - set(e0))
    if missing:
        raise ValueError(f"reference_energies gives no E0 for {missing}, which the data "
                         f"contain (given: {sorted(e0)})")
    extra = sorted(set(e0) - present)
    if extra:
        import warnings

        warnings.warn(f"reference_energies gives E0s for {extra}, which are not in the "
                      "training data; they are kept", stacklevel=2)
    refs = np.zeros(max_z + 1)
    for k, v in e0.items():
        if atomic_numbers[k] <= max_z:
            refs[atomic_numbers[k]] = float(v)
    resid = np.array([(e - refs[z].sum()) / n for e, z, n in zip(energies, numbers, n_atoms)])
    return refs, float(np.mean(resid))


def output_stats(records: Sequence[graph.Record], e0: str | dict = "fit",
                 max_z: int = 118) -> tuple[np.ndarray, float, float]:
    """``(atom_refs, scale, shift)`` of a potential from its training records: E0s by
    :func:`reference_energies` and the scale of :func:`energy_stats` (force RMS, eV/Å, or
    the per-atom residual spread); use as ``cfg.with_stats(*output_stats(train, e0))``."""
    _, scale = energy_stats(records, max_z)
    refs, shift = reference_energies(records, e0, max_z)
    return refs, scale, shift


register("potential", potential)
