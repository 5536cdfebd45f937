"""Generic graph-target readouts built on the model protocol (no model-specific code)."""
from __future__ import annotations

import jax.numpy as jnp

from jaxmat.core.protocol import Model, Outputs, Params
from jaxmat.core.bundle import register


def graph_target(model: Model, key: str = "target", source: str = "energy",
                 per_atom: bool = True) -> Model:
    """Expose a model's summed graph output as a graph target ``outputs[key]``.

    With ``per_atom`` the sum ``outputs[source]`` (G, ...) is divided by the atom count,
    i.e. the atomic terms are mean-pooled: an energy model such as SchNet becomes a
    regressor of an intensive property (e.g. a band gap in eV, with the model's
    ``shift``/``scale`` set to the target's mean and spread and no ``atom_refs``).
    """

    def target(out: Outputs, batch) -> Outputs:
        y = out[source]
        if per_atom:
            n = jnp.maximum(batch.globals["n_atoms"], 1.0)
            y = y / n.reshape((-1,) + (1,) * (y.ndim - 1))
        return {**out, key: y}

    def apply(params: Params, batch) -> Outputs:
        return target(model.apply(params, batch), batch)

    def apply_train(params: Params, batch, rng) -> Outputs:
        return target(model.apply_train(params, batch, rng), batch)

    return Model(model.init, apply, apply_train if model.apply_train else None, model.name,
                 model.graph, {"builder": "graph_target", "model": model, "key": key,
                               "source": source, "per_atom": per_atom})


register("graph_target", graph_target)
