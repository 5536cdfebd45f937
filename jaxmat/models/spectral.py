"""Site-resolved spectral heads for any graph backbone, the stick broadening, and the
spectrum loss.

Each absorbing atom (species ``z``) maps its backbone embedding to its own spectrum; the
molecule spectrum is the mean over the absorbing atoms of the graph, as a measured K-edge
is the average over the element's sites.  Two heads:

* :class:`SiteSpectra` (gridded): MLP + softplus straight onto the grid (non-negative);
* :class:`SiteTransitions` (peak-preserving): ``K`` transitions per site (energies eV,
  intensities >= 0, optionally width factors) and an ionisation edge, broadened by
  :func:`broaden_sticks` — the generator's own broadening — so the output keeps the
  generator's peak widths however the loss is set.

The backbone is any NNX module ``backbone(batch) -> dict`` holding per-atom features
(N, F) under ``feature_key``: :class:`SchNetFeatures` (SchNet's interaction blocks) or
:class:`PaiNNFeatures` (PaiNN's invariant ``scalar_features``).

Outputs: ``{key: (G, P), key + "_site": (N, P)}`` (zero rows for non-absorbing atoms);
the transition head adds ``key + "_site_energy"`` (N, K) eV, ``key + "_site_strength"``
(N, K), ``key + "_site_edge"`` (N,) eV and ``key + "_site_width"`` (N, K) FWHM eV.
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


FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def broadening_fwhm(energies: Any, edge: Any, fwhm_below: float, fwhm_above: float,
                    ramp: float, xp: Any = np) -> Any:
    """Full width at half maximum (eV) of a stick at ``energies`` (..., K) eV for an
    ionisation ``edge`` (...) eV: ``fwhm_below`` at and below the edge, growing linearly to
    ``fwhm_above`` ``ramp`` eV above it."""
    x = xp.clip((energies - xp.asarray(edge)[..., None]) / ramp, 0.0, 1.0)
    return fwhm_below + (fwhm_above - fwhm_below) * x


def broaden_sticks(energies: Any, strengths: Any, grid: Any, fwhm: Any, xp: Any = np) -> Any:
    """Sum of area-normalised Gaussians: sticks ``(energies eV, strengths)`` (..., K) of
    full widths ``fwhm`` (..., K) eV on ``grid`` (P,) eV -> (..., P) strength per eV.
    ``xp``: the array module (``numpy``, or ``jax.numpy`` for a differentiable model);
    the generator (:func:`jaxmat.workflows.xanes.broaden.broaden`) and
    :class:`SiteTransitions` both broaden with it."""
    sigma = fwhm / FWHM_PER_SIGMA
    z = (grid[..., None, :] - energies[..., :, None]) / sigma[..., :, None]
    g = xp.exp(-0.5 * z * z) / (sigma[..., :, None] * np.sqrt(2.0 * np.pi))
    return xp.sum(g * strengths[..., :, None], axis=-2)


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
        return _site_mean(site, batch, cfg.z, cfg.output_key)


def _site_mean(site: jax.Array, batch: graph.Batch, z: int, key: str) -> dict[str, jax.Array]:
    """Zero the rows of non-absorbing and padding atoms; molecule = mean over absorbers."""
    absorber = (batch.nodes["species"] == z) & batch.nodes["mask"]
    site = jnp.where(absorber[:, None], site, 0.0)
    n_abs = graph.graph_sum(absorber.astype(site.dtype), batch)
    mol = graph.graph_sum(site, batch) / jnp.maximum(n_abs, 1.0)[:, None]
    return {key: mol, f"{key}_site": site}


@dataclasses.dataclass(frozen=True)
class TransitionHeadConfig:
    """Peak-preserving head: ``n_transitions`` sticks per absorbing site, broadened onto the
    grid ``(start, stop, points)`` eV as the generator does (FWHM ``fwhm_below`` eV at and
    below the site's edge, ``fwhm_above`` ``ramp`` eV above it).  Stick energies lie in
    ``[start - margin_below, stop + margin_above]`` eV; the edge is ``edge`` ±
    ``edge_range`` eV (``edge``: typical calibrated 1s ionisation energy of the element;
    None = grid centre).  ``widths``: also learn a factor in [0.5, 2] on each stick's
    FWHM.  ``strength_scale``: intensities are ``strength_scale * softplus(.)``."""

    z: int = 8
    grid: tuple[float, float, int] = (526.0, 552.0, 261)
    n_transitions: int = 24
    hidden: int = 128
    n_layers: int = 2
    fwhm_below: float = 0.6
    fwhm_above: float = 4.0
    ramp: float = 12.0
    edge: float | None = None
    edge_range: float = 5.0
    margin_below: float = 2.0
    margin_above: float = 8.0
    widths: bool = False
    strength_scale: float = 0.1
    feature_key: str = "features"
    output_key: str = "xanes"

    def energy_grid(self) -> np.ndarray:
        """The output grid (P,) eV."""
        a, b, n = self.grid
        return np.linspace(a, b, int(n))


class SiteTransitions(nnx.Module):
    """Backbone + per-site transitions (energies, intensities, edge, optional widths),
    broadened by :func:`broaden_sticks`; mean over absorbing atoms per graph."""

    def __init__(self, backbone: nnx.Module, n_features: int, cfg: TransitionHeadConfig,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.backbone = backbone
        k = cfg.n_transitions
        n_out = (3 if cfg.widths else 2) * k + 1
        sizes = [n_features] + [cfg.hidden] * (cfg.n_layers - 1) + [n_out]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        # sticks start spread evenly over the energy window
        u = (np.arange(k) + 0.5) / k
        self.energy_bias = nnx.Param(jnp.asarray(np.log(u / (1 - u)), jnp.float32))

    def transitions(self, h: jax.Array) -> dict[str, jax.Array]:
        """Per-atom ``energy`` (N, K) eV, ``strength`` (N, K), ``edge`` (N,) eV, ``width``
        (N, K) FWHM eV (and ``_rel``, energies above the grid start) from features (N, F)."""
        cfg = self.cfg
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        out = self.layers[-1](h)
        k = cfg.n_transitions
        a, b, _ = cfg.grid
        lo, hi = a - cfg.margin_below, b + cfg.margin_above
        # energies relative to the grid start: float32 keeps ~1e-6 eV instead of ~3e-5 eV
        rel = (lo - a) + (hi - lo) * jax.nn.sigmoid(out[:, :k] + self.energy_bias[...])
        strength = cfg.strength_scale * jax.nn.softplus(out[:, k:2 * k])
        centre = 0.5 * (a + b) if cfg.edge is None else cfg.edge
        edge_rel = (centre - a) + cfg.edge_range * jnp.tanh(out[:, -1])
        width = broadening_fwhm(rel, edge_rel, cfg.fwhm_below, cfg.fwhm_above, cfg.ramp, jnp)
        if cfg.widths:
            width = width * jnp.exp(np.log(2.0) * jnp.tanh(out[:, 2 * k:3 * k]))
        return {"energy": a + rel, "strength": strength, "edge": a + edge_rel, "width": width,
                "_rel": rel}

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        t = self.transitions(self.backbone(batch)[cfg.feature_key])
        g = cfg.energy_grid().astype(np.float64)
        site = broaden_sticks(t.pop("_rel"), t["strength"], jnp.asarray(g - g[0], jnp.float32),
                              t["width"], jnp)
        out = _site_mean(site, batch, cfg.z, cfg.output_key)
        absorber = ((batch.nodes["species"] == cfg.z) & batch.nodes["mask"])[:, None]
        for name, v in t.items():
            keep = absorber if v.ndim == 2 else absorber[:, 0]
            out[f"{cfg.output_key}_site_{name}"] = jnp.where(keep, v, 0.0)
        return out


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


def transition_spectral(backbone: Callable[[nnx.Rngs], nnx.Module], n_features: int,
                        cfg: TransitionHeadConfig | None = None, name: str = "SiteTransitions",
                        graph_spec: GraphSpec | None = None, config: Any = None,
                        **kwargs: Any) -> Model:
    """Protocol model: ``backbone(rngs)`` (per-atom features of width ``n_features`` under
    ``cfg.feature_key``) + the peak-preserving transition head (:class:`SiteTransitions`)."""
    cfg = cfg or TransitionHeadConfig(**kwargs)
    return from_nnx(lambda rngs: SiteTransitions(backbone(rngs), n_features, cfg, rngs),
                    name=name, graph=graph_spec, config=config)


def schnet_transition_spectral(schnet_cfg: SchNetConfig | None = None,
                               cfg: TransitionHeadConfig | None = None, **kwargs: Any) -> Model:
    """Peak-preserving transition head on SchNet atom embeddings."""
    return _on_schnet(transition_spectral, schnet_cfg, cfg or TransitionHeadConfig(**kwargs),
                      "SchNetSiteTransitions")


def schnet_site_spectral(schnet_cfg: SchNetConfig | None = None,
                         cfg: SiteHeadConfig | None = None, **kwargs: Any) -> Model:
    """Site-resolved spectral head on SchNet atom embeddings."""
    return _on_schnet(site_spectral, schnet_cfg, cfg or SiteHeadConfig(**kwargs),
                      "SchNetSiteSpectra")


def _on_schnet(head: Callable[..., Model], scfg: SchNetConfig | None, cfg: Any,
               name: str) -> Model:
    """``head`` (site or transition) on SchNet embeddings (64x3, elements up to Ne default)."""
    scfg = scfg or SchNetConfig(n_features=64, n_interactions=3, max_z=10)
    return head(lambda rngs: SchNetFeatures(scfg, rngs), scfg.n_features, cfg, name=name,
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
register("schnet_transition_spectral", schnet_transition_spectral,
         (SchNetConfig, TransitionHeadConfig))
