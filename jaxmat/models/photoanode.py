"""Composition + spectrum networks for property prediction (photoanode P from Raman).

:func:`photoanode_net` is the published two-branch model of Umehara et al., npj Comput.
Mater. 5:34 (2019): a spectrum branch (Dropout 0.25 → Conv1D(2 filters, kernel 7) → ELU
→ Dropout 0.25 → Dense 32 → 32 → 1), a composition branch (Dense 16, 16, 32, 32 → 1)
and a merged head (Dense 32, 32 → 1), ELU everywhere. The default merge feeds the head
the branches' last hidden layers (``merge="features"``, the one default of the config, the
notebook and the benchmark); ``merge="outputs"`` feeds it the two branch predictions, as
published. The paper's staged training (each
branch alone, then the head, optionally all together) is a workflow:
:func:`jaxmat.workflows.photoanode.fit_staged`.
:func:`cnn1d` is a generic 1-D CNN on a spectrum with optional side inputs;
:func:`composition_spectrum_net` predicts the spectrum from composition (the chain of the
confounding check, :func:`jaxmat.core.interpret.total_gradients`).

Batches are plain dicts: ``spectrum`` (B, n_points) normalised intensities,
``composition`` (B, n_elements) fractions, the target and ``mask`` (B,).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmat.core.protocol import Model, from_nnx


class Conv1DValid(nnx.Module):
    """1-D convolution, 'valid' padding, stride 1, on (B, L, C_in) -> (B, L − K + 1, C_out).

    Written as K shifted matrix products (not ``lax.conv``) so that a committee ``vmap``
    over parameters stays a batched matmul, which XLA:CPU runs far faster than the grouped
    convolution ``vmap`` makes of ``lax.conv``."""

    def __init__(self, in_features: int, out_features: int, kernel: int, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kernel, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x):
        K = self.kernel.shape[0]
        n = x.shape[1] - K + 1
        w = self.kernel[...]
        y = sum(x[:, k:k + n, :] @ w[k] for k in range(K))
        return y + self.bias[...]


class FlatDense(nnx.Module):
    """Dense layer on flattened (B, n, F) conv features -> (B, out), with the kernel stored
    as (F, n, out) (a permutation of flatten + Linear) and applied filter by filter, which
    keeps committee ``vmap`` training fast on CPU."""

    def __init__(self, n: int, filters: int, out: int, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.kernel = nnx.Param(init(rngs.params(), (filters, n, out)))
        self.bias = nnx.Param(jnp.zeros((out,)))

    def __call__(self, h):
        w = self.kernel[...]
        return sum(h[..., k] @ w[k] for k in range(w.shape[0])) + self.bias[...]


def _mlp(sizes: Sequence[int], n_in: int, rngs: nnx.Rngs) -> nnx.List:
    layers, d = [], n_in
    for s in sizes:
        layers.append(nnx.Linear(d, s, rngs=rngs))
        d = s
    return nnx.List(layers)


def _run(layers, h, last_linear: bool = True):
    for k, layer in enumerate(layers):
        h = layer(h)
        if not (last_linear and k == len(layers) - 1):
            h = jax.nn.elu(h)
    return h


@dataclasses.dataclass(frozen=True)
class PhotoanodeConfig:
    """Sizes of the published model; ``merge="features"`` (default) feeds the branches' last
    hidden layers to the head, ``"outputs"`` the two branch predictions (as published)."""

    n_points: int = 1015
    n_elements: int = 7
    filters: int = 2
    kernel: int = 7
    dropout: float = 0.25
    spectrum_hidden: tuple[int, ...] = (32, 32)
    composition_hidden: tuple[int, ...] = (16, 16, 32, 32)
    head_hidden: tuple[int, ...] = (32, 32)
    merge: str = "features"
    target: str = "P"
    composition_mean: tuple[float, ...] | None = None
    composition_std: tuple[float, ...] | None = None

    def with_composition_stats(self, composition) -> "PhotoanodeConfig":
        """Standardise the composition input inside the model with the mean and standard
        deviation of ``composition`` (n, n_elements) (fixed, not trained); gradients stay
        with respect to the raw fractions."""
        x = np.asarray(composition, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_elements:
            raise ValueError(f"composition must be (n, {self.n_elements}), got {x.shape}")
        sd = x.std(0)
        return dataclasses.replace(self, composition_mean=tuple(float(v) for v in x.mean(0)),
                                   composition_std=tuple(float(v) if v > 0 else 1.0 for v in sd))


class SpectrumBranch(nnx.Module):
    def __init__(self, cfg: PhotoanodeConfig, rngs: nnx.Rngs):
        self.drop_in = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.conv = Conv1DValid(1, cfg.filters, cfg.kernel, rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.flat = FlatDense(cfg.n_points - cfg.kernel + 1, cfg.filters, cfg.spectrum_hidden[0], rngs)
        self.hidden = _mlp(cfg.spectrum_hidden[1:], cfg.spectrum_hidden[0], rngs)
        self.out = nnx.Linear(cfg.spectrum_hidden[-1], 1, rngs=rngs)

    def __call__(self, spectrum):
        h = self.drop_in(spectrum)[..., None]
        h = self.drop(jax.nn.elu(self.conv(h)))  # (B, n, F)
        h = _run(self.hidden, jax.nn.elu(self.flat(h)), last_linear=False)
        return h, self.out(h)[:, 0]


class CompositionBranch(nnx.Module):
    def __init__(self, cfg: PhotoanodeConfig, rngs: nnx.Rngs):
        self.hidden = _mlp(cfg.composition_hidden, cfg.n_elements, rngs)
        self.out = nnx.Linear(cfg.composition_hidden[-1], 1, rngs=rngs)
        if cfg.composition_mean is not None and (
                len(cfg.composition_mean) != cfg.n_elements
                or len(cfg.composition_std or ()) != cfg.n_elements):
            raise ValueError(f"composition_mean/std need {cfg.n_elements} values each")
        self.stats = cfg.composition_mean, cfg.composition_std

    def __call__(self, composition):
        mean, std = self.stats
        if mean is not None:
            composition = (composition - jnp.asarray(mean)) / jnp.asarray(std)
        h = _run(self.hidden, composition, last_linear=False)
        return h, self.out(h)[:, 0]


class PhotoanodeNet(nnx.Module):
    """``net(batch) -> {target, target_spectrum, target_composition}``, each (B,)."""

    def __init__(self, cfg: PhotoanodeConfig, rngs: nnx.Rngs):
        if cfg.merge not in ("outputs", "features"):
            raise ValueError(f"merge must be 'outputs' or 'features', got {cfg.merge!r}")
        self.cfg = cfg
        self.spectrum = SpectrumBranch(cfg, rngs)
        self.composition = CompositionBranch(cfg, rngs)
        n_in = 2 if cfg.merge == "outputs" else cfg.spectrum_hidden[-1] + cfg.composition_hidden[-1]
        self.head = _mlp((*cfg.head_hidden, 1), n_in, rngs)

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        t = self.cfg.target
        hs, ys = self.spectrum(batch["spectrum"])
        hc, yc = self.composition(batch["composition"])
        z = jnp.stack([ys, yc], 1) if self.cfg.merge == "outputs" else jnp.concatenate([hs, hc], 1)
        y = _run(self.head, z)[:, 0]
        return {t: y, f"{t}_spectrum": ys, f"{t}_composition": yc}


def photoanode_net(cfg: PhotoanodeConfig | None = None, **kwargs) -> Model:
    """The published composition + Raman model through the protocol (dropout in ``apply_train``)."""
    cfg = cfg or PhotoanodeConfig(**kwargs)
    return from_nnx(lambda rngs: PhotoanodeNet(cfg, rngs), name="PhotoanodeNet")


# --------------------------------------------------------------------------- composition -> spectrum
@dataclasses.dataclass(frozen=True)
class CompositionSpectrumConfig:
    """MLP (``hidden``, ELU) from fractions (n_elements) to a spectrum (n_points, the
    normalised intensities the property model reads). The input is standardised with fixed
    ``composition_mean``/``composition_std`` (see :meth:`PhotoanodeConfig.with_composition_stats`)
    and the output is ``spectrum_mean`` plus the network (so an untrained net predicts the mean)."""

    n_points: int = 1015
    n_elements: int = 7
    hidden: tuple[int, ...] = (64, 64)
    output: str = "spectrum"
    composition_mean: tuple[float, ...] | None = None
    composition_std: tuple[float, ...] | None = None
    spectrum_mean: tuple[float, ...] | None = None

    def with_stats(self, composition, spectrum) -> "CompositionSpectrumConfig":
        """Input standardisation and output offset from training data (n, n_el), (n, n_points)."""
        x, s = np.asarray(composition, np.float64), np.asarray(spectrum, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_elements or s.shape != (len(x), self.n_points):
            raise ValueError(f"need composition (n, {self.n_elements}) and spectrum "
                             f"(n, {self.n_points}), got {x.shape} and {s.shape}")
        sd = x.std(0)
        return dataclasses.replace(
            self, composition_mean=tuple(float(v) for v in x.mean(0)),
            composition_std=tuple(float(v) if v > 0 else 1.0 for v in sd),
            spectrum_mean=tuple(float(v) for v in s.mean(0)))


class CompositionSpectrumNet(nnx.Module):
    """``net(batch) -> {output: (B, n_points)}`` from ``batch["composition"]``."""

    def __init__(self, cfg: CompositionSpectrumConfig, rngs: nnx.Rngs):
        for name, n in (("composition_mean", cfg.n_elements), ("composition_std", cfg.n_elements),
                        ("spectrum_mean", cfg.n_points)):
            v = getattr(cfg, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} needs {n} values, got {len(v)}")
        self.cfg = cfg
        self.mlp = _mlp((*cfg.hidden, cfg.n_points), cfg.n_elements, rngs)

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        cfg = self.cfg
        x = batch["composition"]
        if cfg.composition_mean is not None:
            x = (x - jnp.asarray(cfg.composition_mean)) / jnp.asarray(cfg.composition_std)
        y = _run(self.mlp, x)
        if cfg.spectrum_mean is not None:
            y = y + jnp.asarray(cfg.spectrum_mean)
        return {cfg.output: y}


def composition_spectrum_net(cfg: CompositionSpectrumConfig | None = None, **kwargs) -> Model:
    """Composition → spectrum MLP through the protocol."""
    cfg = cfg or CompositionSpectrumConfig(**kwargs)
    return from_nnx(lambda rngs: CompositionSpectrumNet(cfg, rngs), name="CompositionSpectrumNet")


# --------------------------------------------------------------------------- generic 1-D CNN
@dataclasses.dataclass(frozen=True)
class CNN1DConfig:
    """Conv blocks (``channels`` with ``kernel``, ELU, average pooling by ``pool``), then
    Dense ``hidden`` on the flattened features concatenated with the ``side`` inputs."""

    n_points: int = 1015
    channels: tuple[int, ...] = (8, 16)
    kernel: int = 7
    pool: int = 4
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    input: str = "spectrum"
    side: tuple[str, ...] = ()
    n_side: int = 0
    target: str = "P"


class CNN1D(nnx.Module):
    """``net(batch) -> {target: (B,)}`` from ``batch[input]`` (B, n_points) and side inputs."""

    def __init__(self, cfg: CNN1DConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        convs, c, n = [], 1, cfg.n_points
        for ch in cfg.channels:
            convs.append(nnx.Conv(c, ch, (cfg.kernel,), padding="SAME", rngs=rngs))
            c, n = ch, n // cfg.pool
        if n < 1:
            raise ValueError(f"{len(cfg.channels)} pooling steps of {cfg.pool} leave no points of "
                             f"{cfg.n_points}")
        self.convs = nnx.List(convs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.mlp = _mlp((*cfg.hidden, 1), c * n + cfg.n_side, rngs)

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        cfg = self.cfg
        h = batch[cfg.input][..., None]
        for conv in self.convs:
            h = jax.nn.elu(conv(h))
            n = h.shape[1] // cfg.pool
            h = h[:, : n * cfg.pool].reshape(h.shape[0], n, cfg.pool, -1).mean(2)
        h = self.drop(h.reshape(h.shape[0], -1))
        if cfg.side:
            h = jnp.concatenate([h, *[batch[k].reshape(h.shape[0], -1) for k in cfg.side]], 1)
        return {cfg.target: _run(self.mlp, h)[:, 0]}


def cnn1d(cfg: CNN1DConfig | None = None, **kwargs) -> Model:
    """Generic 1-D CNN through the protocol."""
    cfg = cfg or CNN1DConfig(**kwargs)
    return from_nnx(lambda rngs: CNN1D(cfg, rngs), name="CNN1D")
