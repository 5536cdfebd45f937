"""A simulated combinatorial photoanode library in the layout of Umehara et al. (2019).

Everything is written in JAX, so the exact input gradients of the generator are the
ground truth for :mod:`jaxmat.core.interpret`.

**Compositions.** Seven metal fractions ``Bi, V, W, Dy, Gd, Mo, Tb`` (sum 1) of
scheelite BiVO₄ alloys: Bi-site share ``a = 0.5 + U(-0.03, 0.03)``; W and Mo
(V site) each present with probability 0.5 at ``U(0, 0.10)``; Dy, Gd, Tb (Bi site)
each present with probability 0.4 at ``U(0, 0.08)``; Bi and V fill their sites.

**Raman spectra** (1015 points, ``78.025 + 0.96 k`` cm⁻¹; the real grid's step is not
documented here) are sums of pseudo-Voigt bands of monoclinic BiVO₄ (centre c, FWHM w,
height h; cm⁻¹), with ``t = W + Mo`` and ``r = Dy + Gd + Tb``:

====  =========================================  ==================  ============
band  centre c                                   FWHM w              height h
====  =========================================  ==================  ============
210   210 + 60 r + 30 Gd + 0.5 j                 14 + 30 r           0.25 + 0.5 r
326   326 + 60 t + j                             22 + 40 r           0.30
366   366 − 60 t + j      (the doublet merges)   20 + 40 r           0.40
710   710 − 40 t + 2 j                           40 + 60 t           0.20 + 0.5 t
826   826 − 80 W − 120 Mo + 2.5 j                18 + 4 u + 150 Dy   1 − t
====  =========================================  ==================  ============

``u ~ N(0, 1)`` is a per-sample latent disorder (processing) variable and ``j ~ N(0, 1)``
a strain-like position jitter (the 826 FWHM is softly floored at 8 cm⁻¹). The 826 width
depends on composition through Dy only (:data:`CONFOUNDER`). A broad
fluorescence background ``A exp(-(ν − 1150)² / 2·350²)`` with
``A = 0.05 + Dy + 1.5 Tb + 0.15 |N(0,1)|`` is added, everything is scaled by a
per-sample collection efficiency ``exp(0.3 N(0,1))`` and Gaussian noise of ``noise``
times that scale is added.

**Power** ``P`` (mW/cm²) is a smooth, non-additive function of composition and of one
spectral feature, the standardised width of the 826 cm⁻¹ band ``s = (w₈₂₆ − 22) / 5``::

    b    = (Bi + Dy + Gd + Tb) − (V + W + Mo)            # site balance
    lin  = 0.7 + 2.2 tanh((W + 1.6 Mo) / 0.05)          # donors share one saturation
             + 300 Mo·Gd − 6 Gd                          # Gd helps only with Mo present
             − 300 (b − 0.02)² − 10 Tb
             − 0.3 s (1 + W / 0.04)                       # disorder hurts W-rich films most
    P    = 0.1 softplus(lin / 0.1) + N(0, p_noise²)

Gd's effect changes sign at Mo = 2 at.%, so its marginal correlation with P is weak
although its gradient is large. **Dy is a planted confounder**: it has no direct effect
(replacing Bi by Dy at fixed spectrum leaves P unchanged) but broadens the 826 band, so
its total effect (:func:`total_power_gradient`, the spectrum moving with composition) is
harmful while its effect at fixed spectrum is not; no other element changes s.
:class:`LibraryConfig` plants other structures: other confounders (any elements, any
broadening), another composition hull, and a crystallinity latent that scales every band
width and drives the spectra independently of composition. From :data:`REFERENCE_COMPOSITION` the planted best
alloying direction (largest ∂P along ``e_X − e_host`` at fixed spectrum) is
:data:`PLANTED_DIRECTION` = Mo replacing V.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.data.photoanode import ELEMENTS, N_RAMAN, RAMAN_START, SpectraTable
from jaxmat.core.protocol import Model

RAMAN_STEP = 0.96  # cm⁻¹
RAMAN_SHIFT = RAMAN_START + RAMAN_STEP * np.arange(N_RAMAN)  # cm⁻¹
PLANTED_DIRECTION = ("Mo", "V")  # (added element, host it replaces)
CONFOUNDER = "Dy"  # acts on P only through the 826 cm⁻¹ band width
DY_BROADENING = 150.0  # cm⁻¹ of 826 FWHM per unit Dy fraction
REFERENCE_COMPOSITION = np.array([0.47, 0.46, 0.02, 0.0, 0.03, 0.02, 0.0])  # Bi V W Dy Gd Mo Tb
_I = {e: k for k, e in enumerate(ELEMENTS)}


@dataclasses.dataclass(frozen=True)
class LibraryConfig:
    """Size, noise and planted structure of the simulated library; ``seed`` fixes the draw.

    ``broadening``: (element, cm⁻¹ of 826 FWHM per unit fraction) pairs, the planted
    confounders (default: Dy alone, :data:`DY_BROADENING`). The composition hull:
    ``bi_site`` half-range of the Bi-site share around 0.5, V-site dopants (W, Mo) present
    with probability ``p_v_site`` at ``U(0, v_site_max)``, Bi-site dopants (Dy, Gd, Tb) with
    ``p_b_site`` at ``U(0, b_site_max)``. ``crystallinity``: strength κ of a per-sample latent
    c ~ N(0, 1), independent of composition, that scales every band's FWHM by exp(κ c)
    (the 826 width, and so P, included): with κ ≳ 0.3 processing, not composition,
    dominates the spectra. The defaults give the shipped library."""

    n_samples: int = 1379
    seed: int = 0
    noise: float = 0.01  # Raman noise, relative to the 826 cm⁻¹ band height
    p_noise: float = 0.05  # mW/cm², measurement noise on P
    broadening: tuple[tuple[str, float], ...] = (("Dy", DY_BROADENING),)
    bi_site: float = 0.03
    v_site_max: float = 0.10
    p_v_site: float = 0.5
    b_site_max: float = 0.08
    p_b_site: float = 0.4
    crystallinity: float = 0.0

    def __post_init__(self):
        bad = [e for e, _ in self.broadening if e not in ELEMENTS]
        if bad:
            raise ValueError(f"broadening names unknown element(s) {bad}; elements are {list(ELEMENTS)}")
        for name in ("bi_site", "v_site_max", "b_site_max", "crystallinity"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("p_v_site", "p_b_site"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    @property
    def confounders(self) -> tuple[str, ...]:
        """Elements that act on P through the 826 cm⁻¹ band width (non-zero broadening)."""
        return tuple(e for e, b in self.broadening if b != 0)

    def broadening_vector(self) -> np.ndarray:
        """(7,) cm⁻¹ of 826 FWHM per unit fraction of each element."""
        v = np.zeros(len(ELEMENTS), np.float32)
        for e, b in self.broadening:
            v[_I[e]] += b
        return v

    def hull(self) -> tuple[float, float, float, float, float]:
        return (self.bi_site, self.v_site_max, self.p_v_site, self.b_site_max, self.p_b_site)


def sample_compositions(key: jax.Array, n: int,
                        hull: tuple[float, float, float, float, float] = (0.03, 0.10, 0.5, 0.08, 0.4)
                        ) -> jax.Array:
    """(n, 7) metal fractions (see module docstring); ``hull`` is :meth:`LibraryConfig.hull`."""
    bi_site, v_max, p_v, b_max, p_b = hull
    ks = jax.random.split(key, 4)
    a = 0.5 + jax.random.uniform(ks[0], (n,), minval=-bi_site, maxval=bi_site)
    vsite = jax.random.uniform(ks[1], (n, 2), maxval=v_max) * jax.random.bernoulli(ks[2], p_v, (n, 2))
    ksub = jax.random.split(ks[3], 2)
    bsite = jax.random.uniform(ksub[0], (n, 3), maxval=b_max) * jax.random.bernoulli(ksub[1], p_b, (n, 3))
    w, mo = vsite[:, 0], vsite[:, 1]
    dy, gd, tb = bsite[:, 0], bsite[:, 1], bsite[:, 2]
    bi = a - bsite.sum(1)
    v = (1.0 - a) - vsite.sum(1)
    return jnp.stack([bi, v, w, dy, gd, mo, tb], axis=1)


def _structure(config: "LibraryConfig | None", c: jax.Array | None, n: int):
    cfg = config or LibraryConfig()
    cw = jnp.zeros(n) if c is None else jnp.broadcast_to(jnp.asarray(c, jnp.float32), (n,))
    return jnp.asarray(cfg.broadening_vector()), jnp.exp(cfg.crystallinity * cw)


def band_parameters(x: jax.Array, u: jax.Array, j: jax.Array, config: "LibraryConfig | None" = None,
                    c: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Centres (cm⁻¹), FWHM (cm⁻¹) and heights of the 5 bands, each (n, 5), for the planted
    structure of ``config`` (default :class:`LibraryConfig`) at crystallinity latent ``c``."""
    broad, cryst = _structure(config, c, x.shape[0])
    W, Dy, Gd, Mo, Tb = (x[:, _I[e]] for e in ("W", "Dy", "Gd", "Mo", "Tb"))
    t, r = W + Mo, Dy + Gd + Tb
    one = jnp.ones_like(t)
    c = jnp.stack([210 + 60 * r + 30 * Gd + 0.5 * j, 326 + 60 * t + j, 366 - 60 * t + j,
                   710 - 40 * t + 2 * j, 826 - 80 * W - 120 * Mo + 2.5 * j], 1)
    w = jnp.stack([14 + 30 * r, 22 + 40 * r, 20 + 40 * r, 40 + 60 * t,
                   8 + jax.nn.softplus(10 + 4 * u + x @ broad)], 1) * cryst[:, None]
    h = jnp.stack([0.25 + 0.5 * r, 0.30 * one, 0.40 * one, 0.20 + 0.5 * t, 1.0 - t], 1)
    return c, w, h


def disorder_feature(x: jax.Array, u: jax.Array, config: "LibraryConfig | None" = None,
                     c: jax.Array | None = None) -> jax.Array:
    """The spectral feature P depends on: standardised 826 cm⁻¹ FWHM, (w − 22) / 5."""
    _, w, _ = band_parameters(x, u, jnp.zeros_like(u), config, c)
    return (w[:, 4] - 22.0) / 5.0


def _pseudo_voigt(nu, c, w, h):
    d = (nu[None, None, :] - c[..., None]) / (0.5 * w[..., None])
    return h[..., None] * (0.5 / (1 + d**2) + 0.5 * jnp.exp(-np.log(2.0) * d**2))


def spectra(x: jax.Array, u: jax.Array, j: jax.Array, background: jax.Array, scale: jax.Array,
            noise: jax.Array, nu: jax.Array | None = None, config: "LibraryConfig | None" = None,
            cryst: jax.Array | None = None) -> jax.Array:
    """Raman intensities (n, len(nu)); ``noise`` is (n, len(nu)) already scaled."""
    nu = jnp.asarray(RAMAN_SHIFT if nu is None else nu, jnp.float32)
    c, w, h = band_parameters(x, u, j, config, cryst)
    bands = _pseudo_voigt(nu, c, w, h).sum(1)
    bg = background[:, None] * jnp.exp(-((nu - 1150.0) ** 2) / (2 * 350.0**2))[None]
    return scale[:, None] * (bands + bg) + noise


def power(x: jax.Array, s: jax.Array) -> jax.Array:
    """Noise-free P (mW/cm²) from fractions ``x`` (n, 7) and the feature ``s`` (n,)."""
    Bi, V, W, Dy, Gd, Mo, Tb = (x[:, k] for k in range(7))
    b = (Bi + Dy + Gd + Tb) - (V + W + Mo)
    lin = (0.7 + 2.2 * jnp.tanh((W + 1.6 * Mo) / 0.05) + 300 * Mo * Gd - 6 * Gd
           - 300 * (b - 0.02) ** 2 - 10 * Tb - 0.3 * s * (1 + W / 0.04))
    return 0.1 * jax.nn.softplus(lin / 0.1)


def power_gradient(x: jax.Array, s: jax.Array) -> jax.Array:
    """Exact ∂P/∂x (mW/cm² per unit fraction) at fixed spectrum, (n, 7)."""
    return jax.vmap(jax.grad(lambda xi, si: power(xi[None], si[None])[0]))(
        jnp.asarray(x, jnp.float32), jnp.asarray(s, jnp.float32))


def total_power_gradient(x: jax.Array, u: jax.Array, config: "LibraryConfig | None" = None,
                         c: jax.Array | None = None) -> jax.Array:
    """Exact total dP/dx (n, 7): the spectrum feature moves with composition,
    ∂P/∂x + ∂P/∂s · ∂s/∂x at latent disorder ``u`` (n,) and crystallinity ``c`` (n,)."""
    x = jnp.asarray(x, jnp.float32)
    c = jnp.zeros(x.shape[0]) if c is None else jnp.asarray(c, jnp.float32)

    def p(xi, ui, ci):
        return power(xi[None], disorder_feature(xi[None], ui[None], config, ci[None]))[0]

    return jax.vmap(jax.grad(p))(x, jnp.asarray(u, jnp.float32), c)


def spectra_at(composition, u: float = 0.0, j: float = 0.0, background: float | None = None,
               config: LibraryConfig | None = None, c: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free raw spectra (n, 1015) and the feature s (n,) for given fractions (n, 7)
    at latent disorder ``u``, jitter ``j`` and crystallinity ``c`` (default: a typical
    sample, u = j = c = 0) of the structure ``config``."""
    x = jnp.atleast_2d(jnp.asarray(composition, jnp.float32))
    n = x.shape[0]
    u = jnp.broadcast_to(jnp.asarray(u, jnp.float32), (n,))
    j = jnp.broadcast_to(jnp.asarray(j, jnp.float32), (n,))
    bg = (0.17 + 1.0 * x[:, _I["Dy"]] + 1.5 * x[:, _I["Tb"]] if background is None
          else jnp.full((n,), background, jnp.float32))
    cc = jnp.full((n,), c, jnp.float32)
    spec = spectra(x, u, j, bg, jnp.ones(n), jnp.zeros((n, N_RAMAN)), config=config, cryst=cc)
    return np.asarray(spec), np.asarray(disorder_feature(x, u, config, cc))


def generator_model() -> Model:
    """The generator's P as a protocol model on batches ``{"composition", "feature"}``
    (``feature`` = s), giving ``{"P": mW/cm²}``: run any interpret tool on the truth."""
    return Model(lambda key, batch=None: {},
                 lambda params, batch: {"P": power(batch["composition"], batch["feature"])},
                 name="photoanode_generator")


@functools.partial(jax.jit, static_argnums=(1, 4))
def _simulate(key, n, noise_level, p_noise, config):
    ks = jax.random.split(key, 8)
    x = sample_compositions(ks[0], n, config.hull())
    c = jax.random.normal(ks[7], (n,))
    u = jax.random.normal(ks[1], (n,))
    j = jax.random.normal(ks[2], (n,))
    bg = (0.05 + 1.0 * x[:, _I["Dy"]] + 1.5 * x[:, _I["Tb"]]
          + 0.15 * jnp.abs(jax.random.normal(ks[3], (n,))))
    scale = jnp.exp(0.3 * jax.random.normal(ks[4], (n,)))
    noise = noise_level * scale[:, None] * jax.random.normal(ks[5], (n, N_RAMAN))
    spec = spectra(x, u, j, bg, scale, noise, config=config, cryst=c)
    s = disorder_feature(x, u, config, c)
    p_clean = power(x, s)
    p = p_clean + p_noise * jax.random.normal(ks[6], (n,))
    return x, spec, s, p_clean, p, u, c, power_gradient(x, s), total_power_gradient(x, u, config, c)


def simulate_library(config: LibraryConfig | None = None) -> tuple[SpectraTable, dict[str, np.ndarray]]:
    """The library as a :class:`SpectraTable` (raw spectra, P in mW/cm²) and the hidden
    truth: ``feature`` s, latents ``u`` and ``crystallinity`` c, noise-free ``P_clean``, exact
    ``grad`` ∂P/∂x at fixed spectrum and ``grad_total`` dP/dx with the spectrum moving (both
    mW/cm² per unit fraction) and the planted ``confounders``."""
    cfg = config or LibraryConfig()
    if cfg.n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {cfg.n_samples}")
    n = cfg.n_samples
    x, spec, s, p_clean, p, u, c, grad, grad_total = _simulate(jax.random.key(cfg.seed), n, cfg.noise,
                                                                cfg.p_noise, cfg)
    table = SpectraTable(np.array([f"sim{k:04d}" for k in range(n)]), ELEMENTS,
                         np.asarray(x, np.float32), RAMAN_SHIFT.copy(), np.asarray(spec, np.float32),
                         np.asarray(p, np.float32), "P")
    truth = {"feature": np.asarray(s), "u": np.asarray(u), "crystallinity": np.asarray(c),
             "P_clean": np.asarray(p_clean), "grad": np.asarray(grad),
             "grad_total": np.asarray(grad_total), "confounders": cfg.confounders}
    return table, truth
