"""Site-resolved spectral head for any graph backbone, and the spectrum loss.

Each absorbing atom (species ``z``) maps its backbone embedding to its own spectrum
(MLP + softplus, non-negative); the molecule spectrum is the mean over the absorbing atoms
of the graph, as a measured K-edge is the average over the element's sites.

The backbone is any NNX module ``backbone(batch) -> dict`` holding per-atom features
(N, F) under ``feature_key``: :class:`SchNetFeatures` (SchNet's interaction blocks) or
:class:`PaiNNFeatures` (PaiNN's invariant ``scalar_features``).

Outputs: ``{key: (G, P), key + "_site": (N, P)}`` (zero rows for non-absorbing atoms).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmat import graph
from jaxmat.models.painn import PaiNNConfig, PaiNNFeatures
from jaxmat.models.schnet import SchNetConfig, SchNetFeatures
from jaxmat.protocol import GraphSpec, Model, from_nnx


def gaussian_smoother(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix ``K`` such that ``y @ K`` spreads every grid value over a Gaussian of
    ``sigma`` grid points (rows sum to one: intensity is kept, up to the grid ends).
    Applied after softplus it keeps outputs non-negative and removes wiggles narrower than
    the spectra's own broadening; ``sigma = 0`` gives the identity."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    i = np.arange(n)
    k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return (k / k.sum(1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SiteHeadConfig:
    """``z``: atomic number of the absorbing element; ``n_out`` grid points; ``smooth``:
    Gaussian width (grid points) of the output smoother (:func:`gaussian_smoother`)."""

    z: int = 8
    n_out: int = 200
    hidden: int = 128
    n_layers: int = 2
    smooth: float = 2.0
    feature_key: str = "features"
    output_key: str = "xanes"


class SiteSpectra(nnx.Module):
    """Backbone + per-site spectrum MLP; mean over absorbing atoms per graph."""

    def __init__(self, backbone: nnx.Module, n_features: int, cfg: SiteHeadConfig,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.backbone = backbone
        sizes = [n_features] + [cfg.hidden] * (cfg.n_layers - 1) + [cfg.n_out]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        h = self.backbone(batch)[cfg.feature_key]
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        site = jax.nn.softplus(self.layers[-1](h))
        if cfg.smooth > 0:
            site = site @ gaussian_smoother(cfg.n_out, cfg.smooth)
        absorber = (batch.nodes["species"] == cfg.z) & batch.nodes["mask"]
        site = site * absorber[:, None]
        n_abs = graph.graph_sum(absorber.astype(site.dtype), batch)
        mol = graph.graph_sum(site, batch) / jnp.maximum(n_abs, 1.0)[:, None]
        return {cfg.output_key: mol, f"{cfg.output_key}_site": site}


def site_spectral(backbone: Callable[[nnx.Rngs], nnx.Module], n_features: int,
                  cfg: SiteHeadConfig | None = None, name: str = "SiteSpectra",
                  graph_spec: GraphSpec | None = None, config: Any = None,
                  **kwargs: Any) -> Model:
    """Protocol model: ``backbone(rngs)`` (an NNX module giving per-atom features of width
    ``n_features`` under ``cfg.feature_key``) + the site-resolved spectral head.
    ``graph_spec``: the backbone's graph (default: sparse layout, no cutoff declared)."""
    cfg = cfg or SiteHeadConfig(**kwargs)
    return from_nnx(lambda rngs: SiteSpectra(backbone(rngs), n_features, cfg, rngs), name=name,
                    graph=graph_spec, config=config)


def schnet_site_spectral(schnet_cfg: SchNetConfig | None = None,
                         cfg: SiteHeadConfig | None = None, **kwargs: Any) -> Model:
    """Site-resolved spectral head on SchNet atom embeddings."""
    scfg = schnet_cfg or SchNetConfig(n_features=64, n_interactions=3, max_z=10)
    cfg = cfg or SiteHeadConfig(**kwargs)
    return site_spectral(lambda rngs: SchNetFeatures(scfg, rngs), scfg.n_features, cfg,
                         name="SchNetSiteSpectra",
                         graph_spec=GraphSpec(scfg.cutoff, layouts=("sparse", "dense")),
                         config=(scfg, cfg))


def painn_site_spectral(painn_cfg: PaiNNConfig | None = None,
                        cfg: SiteHeadConfig | None = None, **kwargs: Any) -> Model:
    """Site-resolved spectral head on PaiNN's invariant (scalar) atom features; the vector
    features let the embedding see bond angles that SchNet's distance filters do not."""
    pcfg = painn_cfg or PaiNNConfig(n_features=64, n_interactions=3, max_z=10)
    cfg = cfg or SiteHeadConfig(**kwargs)
    cfg = dataclasses.replace(cfg, feature_key="scalar_features")
    return site_spectral(lambda rngs: PaiNNFeatures(pcfg, rngs), pcfg.n_features, cfg,
                         name="PaiNNSiteSpectra", graph_spec=GraphSpec(pcfg.cutoff),
                         config=(pcfg, cfg))


def spectrum_loss(key: str = "xanes", site_weight: float = 1.0, slope_weight: float = 0.0):
    """MSE of the molecule spectrum ``globals[key]`` (G, P) plus ``site_weight`` x the MSE
    of per-site spectra ``nodes[key + "_site"]`` over atoms flagged in
    ``nodes[key + "_absorber"]`` when the batch and the outputs have them.

    ``slope_weight`` adds that many times the MSE of the first differences along the grid
    (the spectrum's slope per grid step) to each term: a prediction whose peak sits one
    step off costs more than under the plain MSE, which favours sharp, well-placed peaks.

    Stats: ``<key>_mae`` (molecule spectra, per grid point) and ``<key>_site_mae``.
    """

    def sq(err: jax.Array) -> jax.Array:  # per-row squared error, (rows,)
        s = jnp.sum(err**2, axis=-1)
        if slope_weight:
            d = jnp.diff(err, axis=-1)
            s = s + slope_weight * jnp.sum(d**2, axis=-1) * err.shape[-1] / d.shape[-1]
        return s

    def loss(out: dict, batch: Any) -> tuple[jax.Array, dict]:
        g = batch.globals
        m = g["mask"].astype(jnp.float32) * g.get(f"{key}_mask", 1.0)
        err = out[key] - g[key]
        cnt = jnp.maximum(m.sum() * err.shape[-1], 1.0)
        total = jnp.sum(m * sq(err)) / cnt
        stats = {f"{key}_mae": (jnp.sum(m[:, None] * jnp.abs(err)), m.sum() * err.shape[-1])}
        site_key = f"{key}_site"
        if site_weight and site_key in out and site_key in batch.nodes:
            a = (batch.nodes[f"{key}_absorber"] * batch.nodes["mask"]).astype(jnp.float32)
            a = a * batch.nodes.get(f"{site_key}_mask", 1.0)
            e = out[site_key] - batch.nodes[site_key]
            n = jnp.maximum(a.sum() * e.shape[-1], 1.0)
            total = total + site_weight * jnp.sum(a * sq(e)) / n
            stats[f"{site_key}_mae"] = (jnp.sum(a[:, None] * jnp.abs(e)), a.sum() * e.shape[-1])
        return total, stats

    return loss
