"""Message-passing neural network of Gilmer et al. (ICML 2017) with a spectral output,
as used for K-edge XANES by Carbone et al. (PRL 124, 156401, 2020).

* edge network: each edge's matrix ``A(d_ij)`` (F x F) is an MLP of the Gaussian-expanded
  distance (Å); message ``m_i = sum_j A(d_ij) h_j`` over the cutoff graph;
* update: a GRU cell shared across the ``n_steps`` message-passing steps;
* readout: Set2Set (``n_set2set`` LSTM attention steps over the atoms of each graph),
  then an MLP to ``n_out`` non-negative values (softplus, then a fixed Gaussian smoother of
  ``smooth`` grid points): the spectrum on a fixed grid.

``apply(params, batch) -> {output_key: (G, n_out)}``; sparse batch layout.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmat.core import graph
from jaxmat.models.layers import cosine_cutoff, gaussian_rbf
from jaxmat.models.spectral import gaussian_smoother
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.core.bundle import register


@dataclasses.dataclass(frozen=True)
class MPNNConfig:
    """Hyper-parameters (``cutoff`` in Å; ``n_out`` grid points of the spectrum)."""

    n_out: int = 200
    n_features: int = 32
    n_steps: int = 3
    n_set2set: int = 3
    n_rbf: int = 32
    edge_hidden: int = 64
    readout_hidden: int = 128
    cutoff: float = 5.0
    max_z: int = 10
    smooth: float = 2.0  # Gaussian output smoother width, grid points (0: none)
    output_key: str = "xanes"


def segment_softmax(logits: jax.Array, segments: jax.Array, n_segments: int,
                    mask: jax.Array) -> jax.Array:
    """Softmax of ``logits`` (N,) within each segment; masked entries get zero weight."""
    logits = jnp.where(mask, logits, -jnp.inf)
    mx = jax.ops.segment_max(logits, segments, n_segments)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    ex = jnp.where(mask, jnp.exp(logits - mx[segments]), 0.0)
    den = jax.ops.segment_sum(ex, segments, n_segments)
    return ex / jnp.where(den > 0, den, 1.0)[segments]


class Set2Set(nnx.Module):
    """Order-invariant graph readout (Vinyals et al. 2016): (N, F) -> (G, 2F)."""

    def __init__(self, n_features: int, n_steps: int, rngs: nnx.Rngs):
        self.n_steps = n_steps
        self.lstm = nnx.LSTMCell(2 * n_features, n_features, rngs=rngs)

    def __call__(self, h: jax.Array, batch: graph.Batch) -> jax.Array:
        G = graph.n_graphs(batch)
        F = h.shape[-1]
        seg = batch.nodes["graph"]
        mask = batch.nodes["mask"]
        q_star = jnp.zeros((G, 2 * F), h.dtype)
        carry = (jnp.zeros((G, F), h.dtype), jnp.zeros((G, F), h.dtype))
        for _ in range(self.n_steps):
            carry, q = self.lstm(carry, q_star)
            att = segment_softmax(jnp.sum(h * q[seg], -1), seg, G, mask)
            r = jax.ops.segment_sum(att[:, None] * h, seg, G)
            q_star = jnp.concatenate([q, r], -1)
        return q_star


class MPNN(nnx.Module):
    """``MPNN(cfg, rngs)(batch) -> {cfg.output_key: (G, n_out)}`` (non-negative)."""

    def __init__(self, cfg: MPNNConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        F = cfg.n_features
        self.embedding = nnx.Embed(cfg.max_z + 1, F, rngs=rngs)
        self.edge1 = nnx.Linear(cfg.n_rbf, cfg.edge_hidden, rngs=rngs)
        self.edge2 = nnx.Linear(cfg.edge_hidden, F * F, rngs=rngs,
                                kernel_init=nnx.initializers.variance_scaling(
                                    1.0 / F, "fan_in", "truncated_normal"))
        self.gru = nnx.GRUCell(F, F, rngs=rngs)
        self.set2set = Set2Set(F, cfg.n_set2set, rngs)
        self.out1 = nnx.Linear(2 * F, cfg.readout_hidden, rngs=rngs)
        self.out2 = nnx.Linear(cfg.readout_hidden, cfg.n_out, rngs=rngs)

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        if graph.is_dense(batch):
            raise ValueError("MPNN needs the sparse batch layout")
        cfg = self.cfg
        F = cfg.n_features
        d = graph.safe_norm(graph.edge_vectors(batch))
        fcut = cosine_cutoff(d, cfg.cutoff) * batch.edges["mask"]
        a = self.edge2(jax.nn.silu(self.edge1(gaussian_rbf(d, cfg.n_rbf, cfg.cutoff))))
        a = a.reshape(-1, F, F) * fcut[:, None, None]
        node_mask = batch.nodes["mask"][:, None]
        h = self.embedding(batch.nodes["species"]) * node_mask
        for _ in range(cfg.n_steps):
            m = jnp.einsum("efg,eg->ef", a, h[batch.senders])
            m = jax.ops.segment_sum(m, batch.receivers, h.shape[0])
            h, _ = self.gru(h, m)
            h = h * node_mask
        y = jax.nn.softplus(self.out2(jax.nn.silu(self.out1(self.set2set(h, batch)))))
        if cfg.smooth > 0:
            y = y @ gaussian_smoother(cfg.n_out, cfg.smooth)
        return {cfg.output_key: y}


def mpnn(cfg: MPNNConfig | None = None, **kwargs) -> Model:
    """Gilmer MPNN spectrum model through the protocol."""
    cfg = cfg or MPNNConfig(**kwargs)
    return from_nnx(lambda rngs: MPNN(cfg, rngs), name="MPNN", config=cfg,
                    graph=GraphSpec(cfg.cutoff, layouts=("sparse",)))


register("mpnn", mpnn, MPNNConfig)
