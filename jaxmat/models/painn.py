"""PaiNN (Schütt, Unke & Gastegger, ICML 2021) as an NNX module: an equivariant potential.

Every atom carries scalar features s (N, F) and vector features v (N, 3, F). Message
blocks mix neighbours' features through rotation-invariant filters of a Bessel radial
basis times a cosine cutoff (Å) and the bond direction; update blocks couple s and v
inside each atom through norms and scalar products of linear mixes of v. Scalars are
invariant and vectors rotate with the structure. The output is a per-graph energy (eV)
as a sum of atomic terms ``scale * y_i + shift + ref[Z_i]`` (same pattern as SchNet);
forces and stress come from :mod:`jaxmat.core.potential` by differentiating this function.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmat.core import graph
from jaxmat.models.layers import AtomicEnergyHead, EnergyStats, bessel_rbf, cosine_cutoff
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.core.bundle import register


@dataclasses.dataclass(frozen=True)
class PaiNNConfig(EnergyStats):
    """Hyper-parameters. Defaults are the size the benchmarks train on CPU (64 features);
    the published model has 128 features, 3 interactions, 20 Bessel functions, 5 Å cutoff. ``atom_refs`` (eV per element, index = Z) and ``scale``/``shift``
    (eV per atom) are usually fitted on the training set
    (:func:`jaxmat.core.potential.fit_energy_stats`). ``return_features`` adds the final
    ``scalar_features`` (N, F) and ``vector_features`` (N, 3, F) to the outputs."""

    n_features: int = 64
    n_interactions: int = 3
    n_rbf: int = 20
    cutoff: float = 5.0
    max_z: int = 118
    atom_refs: tuple[float, ...] | None = None
    scale: float = 1.0
    shift: float = 0.0
    norm_eps: float = 1e-8
    return_features: bool = False


class Message(nnx.Module):
    """Δs_i = Σ_j φ_s(s_j) W_s(r_ij);  Δv_i = Σ_j v_j φ_vv(s_j) W_vv + r̂_ij φ_vs(s_j) W_vs."""

    def __init__(self, F: int, n_rbf: int, rngs: nnx.Rngs):
        self.phi1 = nnx.Linear(F, F, rngs=rngs)
        self.phi2 = nnx.Linear(F, 3 * F, rngs=rngs)
        self.filter = nnx.Linear(n_rbf, 3 * F, rngs=rngs)

    def __call__(self, s, v, rbf, fcut, unit, senders, receivers):
        n = s.shape[0]
        x = self.phi2(jax.nn.silu(self.phi1(s)))[senders] * self.filter(rbf) * fcut[:, None]
        ds, dvv, dvs = jnp.split(x, 3, axis=-1)
        dv = v[senders] * dvv[:, None, :] + unit[:, :, None] * dvs[:, None, :]
        return (s + jax.ops.segment_sum(ds, receivers, n),
                v + jax.ops.segment_sum(dv, receivers, n))


class Update(nnx.Module):
    """Per atom: a = MLP(s, ‖V v‖); Δv = a_vv U v; Δs = a_sv <U v, V v> + a_ss."""

    def __init__(self, F: int, eps: float, rngs: nnx.Rngs):
        self.U = nnx.Linear(F, F, use_bias=False, rngs=rngs)
        self.V = nnx.Linear(F, F, use_bias=False, rngs=rngs)
        self.mlp1 = nnx.Linear(2 * F, F, rngs=rngs)
        self.mlp2 = nnx.Linear(F, 3 * F, rngs=rngs)
        self.eps = eps

    def __call__(self, s, v):
        uv, vv = self.U(v), self.V(v)
        norm = jnp.sqrt(jnp.sum(vv * vv, axis=1) + self.eps)  # smooth at v = 0
        a = self.mlp2(jax.nn.silu(self.mlp1(jnp.concatenate([s, norm], axis=-1))))
        a_vv, a_sv, a_ss = jnp.split(a, 3, axis=-1)
        return (s + a_sv * jnp.sum(uv * vv, axis=1) + a_ss,
                v + a_vv[:, None, :] * uv)


class PaiNNFeatures(nnx.Module):
    """Embedding + message/update blocks: ``(batch) -> {"scalar_features": (N, F),
    "vector_features": (N, 3, F)}`` (the backbone of :class:`PaiNN` and of the
    site-resolved spectral head)."""

    def __init__(self, cfg: PaiNNConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        F = cfg.n_features
        self.embedding = nnx.Embed(cfg.max_z + 1, F, rngs=rngs)
        self.messages = nnx.List([Message(F, cfg.n_rbf, rngs) for _ in range(cfg.n_interactions)])
        self.updates = nnx.List([Update(F, cfg.norm_eps, rngs) for _ in range(cfg.n_interactions)])

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        vec = graph.edge_vectors(batch)
        d = graph.safe_norm(vec)
        unit = vec / jnp.where(d > 0, d, 1.0)[:, None]
        fcut = cosine_cutoff(d, cfg.cutoff) * batch.edges["mask"]
        rbf = bessel_rbf(d, cfg.n_rbf, cfg.cutoff)
        s = self.embedding(batch.nodes["species"])
        v = jnp.zeros((s.shape[0], 3, s.shape[1]), s.dtype)
        for msg, upd in zip(self.messages, self.updates):
            s, v = msg(s, v, rbf, fcut, unit, batch.senders, batch.receivers)
            s, v = upd(s, v)
        return {"scalar_features": s, "vector_features": v}


class PaiNN(nnx.Module):
    """``PaiNN(cfg, rngs)(batch) -> {"energy": (G,) eV, "atomic_energies": (N,) eV}``."""

    def __init__(self, cfg: PaiNNConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.features = PaiNNFeatures(cfg, rngs)
        self.head = AtomicEnergyHead(cfg.n_features, cfg.max_z, cfg.atom_refs, cfg.scale,
                                     cfg.shift, jax.nn.silu, rngs)

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        feats = self.features(batch)
        z = batch.nodes["species"]
        e_atom = self.head(feats["scalar_features"], z, batch.nodes["mask"])
        out = {"energy": graph.graph_sum(e_atom, batch), "atomic_energies": e_atom}
        if self.cfg.return_features:
            out.update(feats)
        return out


def painn(cfg: PaiNNConfig | None = None, **kwargs) -> Model:
    """PaiNN energy model through the protocol (``apply`` gives energies; wrap it with
    :func:`jaxmat.core.potential.potential` for forces and stress)."""
    cfg = cfg or PaiNNConfig(**kwargs)
    return from_nnx(lambda rngs: PaiNN(cfg, rngs), name="PaiNN", config=cfg,
                    graph=GraphSpec(cfg.cutoff, layouts=("sparse",)))


register("painn", painn, PaiNNConfig)
