"""Per-atom MLP of raw Cartesian coordinates, for model potentials (double wells, 2-D
surfaces) where each "atom" is a point in a low-dimensional space.

Energy (eV) of a graph = sum over its atoms of ``scale * MLP(x_i[:dims]) + shift``; it is
not invariant under rotations or translations and ignores species and edges, so it is
only meant for toy problems (e.g. the 1-D double well of :mod:`jaxmat.workflows.adversarial.oracle`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmat.core import graph
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.core.bundle import register


@dataclasses.dataclass(frozen=True)
class CoordinateMLPConfig:
    """``dims`` leading coordinates (Å) are the input; smooth ``tanh`` hidden layers;
    ``x_scale`` (Å) divides the input and ``scale``/``shift`` (eV) map the output."""

    dims: int = 1
    features: tuple[int, ...] = (16, 16)
    x_scale: float = 1.0
    scale: float = 1.0
    shift: float = 0.0


class CoordinateMLP(nnx.Module):
    """``CoordinateMLP(cfg, rngs)(batch) -> {"energy": (G,) eV}``."""

    def __init__(self, cfg: CoordinateMLPConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        sizes = (cfg.dims, *cfg.features, 1)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        h = batch.nodes["positions"][:, : cfg.dims] / cfg.x_scale
        for layer in self.layers[:-1]:
            h = jnp.tanh(layer(h))
        e_atom = (cfg.scale * self.layers[-1](h)[:, 0] + cfg.shift) * batch.nodes["mask"]
        return {"energy": graph.graph_sum(e_atom, batch)}


def coordinate_mlp(cfg: CoordinateMLPConfig | None = None, **kwargs) -> Model:
    """Coordinate MLP energy model through the protocol (wrap with
    :func:`jaxmat.core.potential.potential` for forces)."""
    cfg = cfg or CoordinateMLPConfig(**kwargs)
    return from_nnx(lambda rngs: CoordinateMLP(cfg, rngs), name="CoordinateMLP", config=cfg,
                    graph=GraphSpec(layouts=("sparse", "dense")))


register("coordinate_mlp", coordinate_mlp, CoordinateMLPConfig)
