"""ALIGNN-style crystal property model (Choudhary & DeCost, npj Comput. Mater. 7:185, 2021).

Edge-gated graph convolutions alternate between the atom graph (atoms, bonds) and its
line graph (bonds, bond angles): each ALIGNN layer updates atom and bond features on the
atom graph, then bond and angle features on the line graph; plain edge-gated layers on the
atom graph follow; atom features are mean-pooled per structure and a linear head gives a
scalar or a vector target (e.g. a 300-point DOS) as ``scale * y + shift``.

Inputs: batches with line graphs (records of the model's spec, :func:`jaxmat.core.graph.records`). Bond
lengths (Å) are expanded in Gaussians on [0, cutoff], bond-angle cosines on [-1, 1]; both
are computed in the model from positions, so input gradients are exact.
Differences from the published model: atoms are embedded from the atomic number (no
CGCNN feature table) and layer normalisation replaces batch normalisation (no batch
statistics, so outputs do not depend on the other structures or the padding).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmat.core import graph
from jaxmat.core.graph import linegraph
from jaxmat.models.layers import gaussian_rbf
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.core.bundle import register


@dataclasses.dataclass(frozen=True)
class ALIGNNConfig:
    """Hyper-parameters (defaults as published: 4 ALIGNN + 4 GCN layers, embedding 64,
    hidden 256, 80 bond and 40 angle basis functions, 8 Å). ``n_outputs`` > 1 gives a
    vector target (G, n_outputs); ``scale``/``shift`` are in target units (e.g. eV)."""

    n_alignn_layers: int = 4
    n_gcn_layers: int = 4
    embedding: int = 64
    hidden: int = 256
    n_bond_rbf: int = 80
    n_angle_rbf: int = 40
    cutoff: float = 8.0
    max_neighbors: int | None = 12
    max_z: int = 118
    n_outputs: int = 1
    output_key: str = "target"
    scale: float = 1.0
    shift: float = 0.0

    def with_stats(self, scale: float, shift: float = 0.0) -> "ALIGNNConfig":
        return dataclasses.replace(self, scale=float(scale), shift=float(shift))


class MLPLayer(nnx.Module):
    """Linear -> LayerNorm -> SiLU."""

    def __init__(self, n_in: int, n_out: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(n_in, n_out, rngs=rngs)
        self.norm = nnx.LayerNorm(n_out, rngs=rngs)

    def __call__(self, x):
        return jax.nn.silu(self.norm(self.linear(x)))


class EdgeGatedConv(nnx.Module):
    """Edge-gated graph convolution with residuals on nodes and edges.

    gate_ij = A h_i + B h_j + C e_ij on edge j -> i;
    h_i' = h_i + SiLU(LN(U h_i + Σ_j σ(gate_ij) ⊙ V h_j / (Σ_j σ(gate_ij) + 1e-6)));
    e_ij' = e_ij + SiLU(LN(gate_ij)). Masked edges send nothing.
    """

    def __init__(self, n: int, rngs: nnx.Rngs):
        self.gate_dst = nnx.Linear(n, n, rngs=rngs)
        self.gate_src = nnx.Linear(n, n, rngs=rngs)
        self.gate_edge = nnx.Linear(n, n, rngs=rngs)
        self.self_update = nnx.Linear(n, n, rngs=rngs)
        self.neigh_update = nnx.Linear(n, n, rngs=rngs)
        self.norm_nodes = nnx.LayerNorm(n, rngs=rngs)
        self.norm_edges = nnx.LayerNorm(n, rngs=rngs)

    def __call__(self, h, e, senders, receivers, mask):
        gate = self.gate_dst(h)[receivers] + self.gate_src(h)[senders] + self.gate_edge(e)
        sigma = jax.nn.sigmoid(gate) * mask[:, None]
        n = h.shape[0]
        num = jax.ops.segment_sum(sigma * self.neigh_update(h)[senders], receivers, n)
        den = jax.ops.segment_sum(sigma, receivers, n)
        h_new = self.self_update(h) + num / (den + 1e-6)
        h = h + jax.nn.silu(self.norm_nodes(h_new))
        e = e + jax.nn.silu(self.norm_edges(gate))
        return h, e


class ALIGNNLayer(nnx.Module):
    """Atom-graph convolution, then line-graph convolution on the updated bond features."""

    def __init__(self, n: int, rngs: nnx.Rngs):
        self.atom_conv = EdgeGatedConv(n, rngs)
        self.bond_conv = EdgeGatedConv(n, rngs)

    def __call__(self, h, e, t, batch):
        line = batch.edges["line"]
        h, e = self.atom_conv(h, e, batch.senders, batch.receivers, batch.edges["mask"])
        e, t = self.bond_conv(e, t, line["senders"], line["receivers"], line["mask"])
        return h, e, t


class ALIGNN(nnx.Module):
    """``ALIGNN(cfg, rngs)(batch) -> {cfg.output_key: (G,) or (G, n_outputs)}``."""

    def __init__(self, cfg: ALIGNNConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        H, M = cfg.hidden, cfg.embedding
        self.atom_embed = nnx.Embed(cfg.max_z + 1, M, rngs=rngs)
        self.atom_in = MLPLayer(M, H, rngs)
        self.bond_in1 = MLPLayer(cfg.n_bond_rbf, M, rngs)
        self.bond_in2 = MLPLayer(M, H, rngs)
        self.angle_in1 = MLPLayer(cfg.n_angle_rbf, M, rngs)
        self.angle_in2 = MLPLayer(M, H, rngs)
        self.alignn = nnx.List([ALIGNNLayer(H, rngs) for _ in range(cfg.n_alignn_layers)])
        self.gcn = nnx.List([EdgeGatedConv(H, rngs) for _ in range(cfg.n_gcn_layers)])
        # zero-initialised head: an untrained model predicts `shift` (the mean, once fitted)
        self.head = nnx.Linear(H, cfg.n_outputs, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        if "line" not in batch.edges:
            raise ValueError("ALIGNN needs batches with line graphs "
                             "(jaxmat.core.graph.records(structures, model))")
        vec = graph.edge_vectors(batch)
        d = graph.safe_norm(vec)
        cos = linegraph.bond_cosines(batch, vec)
        h = self.atom_in(self.atom_embed(batch.nodes["species"]))
        e = self.bond_in2(self.bond_in1(gaussian_rbf(d, cfg.n_bond_rbf, cfg.cutoff)))
        t = self.angle_in2(self.angle_in1(gaussian_rbf(cos, cfg.n_angle_rbf, 1.0, start=-1.0)))
        for layer in self.alignn:
            h, e, t = layer(h, e, t, batch)
        for conv in self.gcn:
            h, e = conv(h, e, batch.senders, batch.receivers, batch.edges["mask"])
        mask = batch.nodes["mask"]
        pooled = graph.graph_sum(h * mask[:, None], batch)
        pooled = pooled / jnp.maximum(batch.globals["n_atoms"], 1.0)[:, None]
        y = cfg.scale * self.head(pooled) + cfg.shift
        if cfg.n_outputs == 1:
            y = y[:, 0]
        return {cfg.output_key: y}


def alignn(cfg: ALIGNNConfig | None = None, **kwargs) -> Model:
    """ALIGNN-style model through the protocol; ``apply`` gives ``{cfg.output_key: ...}``."""
    cfg = cfg or ALIGNNConfig(**kwargs)
    return from_nnx(lambda rngs: ALIGNN(cfg, rngs), name="ALIGNN", config=cfg,
                    graph=GraphSpec(cfg.cutoff, cfg.max_neighbors, line_graph=True))


register("alignn", alignn, ALIGNNConfig)
