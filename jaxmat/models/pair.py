"""A Morse pair potential as a jaxmat model: an analytic reference for tests and MD checks.

``E = ½ Σ_{i≠j} D [(1 - exp(-a (r_ij - r0)))² - 1] f_c(r_ij)`` (eV), with the cosine
cutoff ``f_c`` of :mod:`jaxmat.models.layers`, over the sparse edge list. Parameters ``D``
(eV), ``a`` (1/Å) and ``r0`` (Å) are the param pytree, so the model is trainable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmat.core import graph
from jaxmat.core.protocol import GraphSpec, Model
from jaxmat.models.layers import cosine_cutoff


def morse(D: float = 0.3, a: float = 1.5, r0: float = 2.5, cutoff: float = 6.0) -> Model:
    """Energy model (``energy`` (G,) eV) of one Morse pair potential for all elements."""

    def init(key: jax.Array, batch: graph.Batch) -> dict:
        return {"D": jnp.asarray(D, jnp.float32), "a": jnp.asarray(a, jnp.float32),
                "r0": jnp.asarray(r0, jnp.float32)}

    def apply(params: dict, batch: graph.Batch) -> dict:
        d = jnp.linalg.norm(graph.edge_vectors(batch), axis=-1)
        x = 1.0 - jnp.exp(-params["a"] * (d - params["r0"]))
        e = params["D"] * (x * x - 1.0) * cosine_cutoff(d, cutoff)
        e = jnp.where(batch.edges["mask"], e, 0.0)
        n = batch.nodes["positions"].shape[0]
        node_e = jax.ops.segment_sum(0.5 * e, batch.receivers, n)
        return {"energy": graph.graph_sum(jnp.where(batch.nodes["mask"], node_e, 0.0), batch)}

    return Model(init, apply, None, "morse", GraphSpec(cutoff))
