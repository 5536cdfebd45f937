"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018) as an NNX module.

Continuous-filter convolutions over the cutoff graph with a Gaussian radial basis
and a smooth cosine cutoff. The output is a per-graph energy (eV) as a sum of atomic
terms ``scale * y_i + shift + ref[Z_i]``; forces and stress come from
:mod:`jaxmat.core.potential` by differentiating this same function.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from jaxmat.core import graph
from jaxmat.models.layers import (AtomicEnergyHead, EnergyStats, cosine_cutoff, gaussian_rbf,
                                  shifted_softplus)
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.core.bundle import register


@dataclasses.dataclass(frozen=True)
class SchNetConfig(EnergyStats):
    """Hyper-parameters (defaults: the demo's and the ammonia benchmarks' CPU recipe);
    ``atom_refs`` (eV per element, index = Z) and ``scale``/``shift`` (eV per atom) are
    fitted on the training set: ``cfg.with_stats(*jaxmat.core.potential.energy_stats(train))``."""

    n_features: int = 64
    n_interactions: int = 3
    n_rbf: int = 20
    cutoff: float = 5.0
    max_z: int = 118
    atom_refs: tuple[float, ...] | None = None
    scale: float = 1.0
    shift: float = 0.0


class Interaction(nnx.Module):
    def __init__(self, n_features: int, n_rbf: int, rngs: nnx.Rngs):
        F = n_features
        self.filter1 = nnx.Linear(n_rbf, F, rngs=rngs)
        self.filter2 = nnx.Linear(F, F, rngs=rngs)
        self.in2f = nnx.Linear(F, F, use_bias=False, rngs=rngs)
        self.f2out = nnx.Linear(F, F, rngs=rngs)
        self.dense = nnx.Linear(F, F, rngs=rngs)

    def __call__(self, h: jax.Array, rbf: jax.Array, fcut: jax.Array,
                 batch: graph.Batch, pairs: graph.Pairs) -> jax.Array:
        """Update (N, F) from node features ``h``, pair basis ``rbf`` (P, n_rbf) and
        cutoff envelope ``fcut`` (P,) (zero on masked pairs) of ``pairs``
        (:func:`jaxmat.core.graph.pair_list`: each filter once per pair); any batch layout."""
        w = self.filter2(shifted_softplus(self.filter1(rbf))) * fcut[:, None]
        x = graph.convolve(self.in2f(h), w, batch, pairs)
        return self.dense(shifted_softplus(self.f2out(x)))


class SchNetFeatures(nnx.Module):
    """Embedding + interaction blocks: ``(batch) -> {"features": (N, F)}`` invariant atom
    features (the backbone of :class:`SchNet` and of the site-resolved spectral head)."""

    def __init__(self, cfg: SchNetConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        F = cfg.n_features
        self.embedding = nnx.Embed(cfg.max_z + 1, F, rngs=rngs)
        self.interactions = nnx.List(
            [Interaction(F, cfg.n_rbf, rngs) for _ in range(cfg.n_interactions)])

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        pairs = graph.pair_list(batch)
        d = graph.safe_norm(graph.pair_vectors(batch, pairs))
        fcut = cosine_cutoff(d, cfg.cutoff) * pairs.mask
        rbf = gaussian_rbf(d, cfg.n_rbf, cfg.cutoff)
        h = self.embedding(batch.nodes["species"])
        for block in self.interactions:
            h = h + block(h, rbf, fcut, batch, pairs)
        return {"features": h}


class SchNet(nnx.Module):
    """``SchNet(cfg, rngs)(batch) -> {"energy": (G,) eV, "atomic_energies": (N,) eV}``."""

    def __init__(self, cfg: SchNetConfig, rngs: nnx.Rngs):
        self.features = SchNetFeatures(cfg, rngs)
        self.head = AtomicEnergyHead(cfg.n_features, cfg.max_z, cfg.atom_refs, cfg.scale,
                                     cfg.shift, shifted_softplus, rngs)

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        h = self.features(batch)["features"]
        e_atom = self.head(h, batch.nodes["species"], batch.nodes["mask"])
        return {"energy": graph.graph_sum(e_atom, batch), "atomic_energies": e_atom}


def schnet(cfg: SchNetConfig | None = None, **kwargs) -> Model:
    """SchNet energy model through the protocol (``apply`` gives energies; wrap it with
    :func:`jaxmat.core.potential.potential` for forces and stress)."""
    cfg = cfg or SchNetConfig(**kwargs)
    return from_nnx(lambda rngs: SchNet(cfg, rngs), name="SchNet", config=cfg,
                    graph=GraphSpec(cfg.cutoff, layouts=("sparse", "dense")))


register("schnet", schnet, SchNetConfig)
