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

from jaxmat.core import graph
from jaxmat.models.painn import PaiNNConfig, PaiNNFeatures
from jaxmat.models.schnet import SchNetConfig, SchNetFeatures
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.core.bundle import register


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


@dataclasses.dataclass(frozen=True)
class SpectrumLoss:
    """MSE of the molecule spectrum ``globals[key]`` (G, P) plus ``site_weight`` x the MSE
    of per-site spectra ``nodes[key + "_site"]`` over atoms flagged in
    ``nodes[key + "_absorber"]`` when the batch and the outputs have them (the site term is
    optional; the molecule spectrum is a required target).

    ``slope_weight`` adds that many times the MSE of the first differences along the grid
    (the spectrum's slope per grid step) to each term: a prediction whose peak sits one
    step off costs more than under the plain MSE, which favours sharp, well-placed peaks.
    Masks apply with ``jnp.where``. Stats: ``<key>_mae`` (per grid point), ``<key>_site_mae``.
    """

    key: str = "xanes"
    site_weight: float = 1.0
    slope_weight: float = 0.0

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.key,)

    def _term(self, err: jax.Array, rows: jax.Array) -> tuple[jax.Array, tuple]:
        err = jnp.where(rows[:, None], err, 0.0)
        s = jnp.sum(err**2, axis=-1)
        if self.slope_weight:
            d = jnp.diff(err, axis=-1)
            s = s + self.slope_weight * jnp.sum(d**2, axis=-1) * err.shape[-1] / d.shape[-1]
        count = (rows.sum() * err.shape[-1]).astype(jnp.float32)
        return jnp.sum(s) / jnp.maximum(count, 1.0), (jnp.sum(jnp.abs(err)), count)

    def __call__(self, out: dict, batch: Any) -> tuple[jax.Array, dict]:
        key, g, site = self.key, batch.globals, f"{self.key}_site"
        rows = jnp.asarray(g["mask"], bool) & jnp.asarray(g.get(f"{key}_mask", True), bool)
        stats = {}
        total, stats[f"{key}_mae"] = self._term(out[key] - g[key], rows)
        if self.site_weight and site in out and site in batch.nodes:
            n = batch.nodes
            atoms = (jnp.asarray(n[f"{key}_absorber"], bool) & jnp.asarray(n["mask"], bool)
                     & jnp.asarray(n.get(f"{site}_mask", True), bool))
            value, stats[f"{site}_mae"] = self._term(out[site] - n[site], atoms)
            total = total + self.site_weight * value
        return total, stats


def spectrum_loss(key: str = "xanes", site_weight: float = 1.0,
                  slope_weight: float = 0.0) -> SpectrumLoss:
    """The :class:`SpectrumLoss` with these settings (a hashable value: equal settings give
    equal losses, so training reuses one compiled step)."""
    return SpectrumLoss(key, site_weight, slope_weight)


register("schnet_site_spectral", schnet_site_spectral, (SchNetConfig, SiteHeadConfig))
register("painn_site_spectral", painn_site_spectral, (PaiNNConfig, SiteHeadConfig))
