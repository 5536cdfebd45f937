"""Committee statistics: the one place where member outputs become mean and variance.

Names (population variance over members, axis 0 of the outputs):

* ``{k}_mean``, ``{k}_var`` for every output ``k`` (units of ``k`` and its square);
* ``forces_var`` (N, 3) eV²/Å², ``forces_var_atom`` (N,) eV²/Å²: summed over xyz;
* ``forces_var_graph`` (G,) eV²/Å² (given the batch): the mean of ``forces_var`` over the
  real atoms and xyz components of each graph (0 for padding graphs) — the variance in
  the adversarial objective (:mod:`jaxmat.workflows.adversarial.attack`) and the selection score
  (:mod:`jaxmat.workflows.adversarial.select`); its square root is the committee force σ (eV/Å).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmat.core import graph


def stats(outputs: dict[str, jax.Array], keys: Sequence[str] | None = None,
          batch: Any = None) -> dict[str, jax.Array]:
    """Mean and variance over the leading member axis of per-member ``outputs`` (jit-able).

    ``keys`` restricts the outputs (default: all); ``batch`` (the graph batch the outputs
    belong to) adds ``forces_var_graph``.
    """
    keys = tuple(outputs) if keys is None else tuple(keys)
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise ValueError(f"committee outputs have no {missing}; found {sorted(outputs)}")
    out = {}
    for k in keys:
        v = outputs[k]
        out[f"{k}_mean"] = jnp.mean(v, axis=0)
        out[f"{k}_var"] = jnp.var(v, axis=0)
    if "forces_var" in out:
        out["forces_var_atom"] = jnp.sum(out["forces_var"], axis=-1)
        if batch is not None:
            out["forces_var_graph"] = per_graph_mean(out["forces_var_atom"] / 3.0, batch)
    return out


def per_graph_mean(x: jax.Array, batch: Any) -> jax.Array:
    """(G,) mean of per-atom values ``x`` (N,) over the real atoms of each graph (0 for
    padding graphs); works for both batch layouts."""
    total = graph.graph_sum(jnp.where(batch.nodes["mask"], x, 0.0), batch)
    return total / jnp.maximum(batch.globals["n_atoms"], 1.0)
