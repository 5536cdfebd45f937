"""MACE (Batatia et al., NeurIPS 2022) as an NNX module: a many-body equivariant potential.

Atom features are irreps of O(3) with natural parity, kept as ``{l: (N, C, 2l+1)}``
(C channels per degree l). Each interaction layer

1. sends equivariant messages: neighbour features ⊗ spherical harmonics Y(r̂_ij) to
   ``l_max``, coupled by Clebsch–Gordan coefficients, one weight per path and channel from
   a radial MLP of a Bessel basis times a polynomial envelope (zero at the cutoff, Å);
2. sums them on the receiver into the atomic basis A_i (divided by ``avg_num_neighbors``);
3. raises the body order by a symmetric contraction of A_i with itself to
   ``correlation`` ν (per-element weights; the basis of symmetric tensor powers comes
   from e3nn-jax), then mixes channels and adds a per-element skip connection;
4. reads out an energy term from the invariant channels (a linear map in hidden layers,
   a small MLP in the last one).

The energy is ``Σ_i scale * Σ_t y_i^t + shift + ref[Z_i]`` (eV), the same pattern as
SchNet and PaiNN; forces and stress come from :mod:`jaxmat.core.potential`.

Spherical harmonics, the channelwise tensor products of the messages and the symmetric
contraction are cuequivariance descriptors executed by ``cuequivariance_jax``
(``method="auto"``: its pure-JAX ``naive`` path on CPU, the ``uniform_1d`` CUDA kernels on a
GPU; optional extra: ``pip install 'jaxmat[mace]'``). Why this library and not e3nn-jax:
``benchmarks/mace_libs.py`` (one layer, energy + forces on CPU).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmat.core import graph
from jaxmat.core.bundle import register
from jaxmat.core.protocol import GraphSpec, Model, from_nnx
from jaxmat.models.layers import EnergyStats, atom_ref_table, bessel_rbf


def _cue():
    try:
        import cuequivariance
        import cuequivariance_jax
    except ImportError as e:  # the optional extra is missing
        raise ImportError("jaxmat.models.mace needs cuequivariance-jax, which is not installed; "
                          "install the extra: pip install 'jaxmat[mace]'") from e
    return cuequivariance, cuequivariance_jax


@dataclasses.dataclass(frozen=True)
class MACEConfig(EnergyStats):
    """Hyper-parameters (defaults: 2 layers, 32 channels, spherical harmonics to
    ``l_max`` 2, node features to ``hidden_l`` 1, correlation 3, 8 Bessel functions,
    5 Å cutoff, radial MLP 64×3, readout MLP 16). ``first_residual`` adds the per-element
    skip connection to the first layer too (mace-torch's default
    ``RealAgnosticResidualInteractionBlock`` there; on the first layer it adds a learned
    per-element constant to the invariant channels). ``first_message_by_element`` makes the
    first layer's message mixing depend on the receiving atom's element (mace-torch's
    ``RealAgnosticInteractionBlock``, mlip's first layer without residual).
    ``avg_num_neighbors`` divides the
    message sums (set it to the training set's mean number of neighbours within the
    cutoff). ``method``: how cuequivariance runs the polynomials (``"auto"``, ``"naive"``,
    ``"uniform_1d"``). ``atom_refs`` (eV per element, index = Z) and ``scale``/``shift`` (eV per atom)
    are fitted on the training set: ``cfg.with_stats(*jaxmat.core.potential.energy_stats(train))``."""

    n_channels: int = 32
    n_interactions: int = 2
    l_max: int = 2
    hidden_l: int = 1
    correlation: int = 3
    n_rbf: int = 8
    envelope_p: int = 5
    radial_features: int = 64
    radial_layers: int = 3
    readout_features: int = 16
    cutoff: float = 5.0
    avg_num_neighbors: float = 8.0
    first_residual: bool = False
    first_message_by_element: bool = False
    max_z: int = 118
    method: str = "auto"
    atom_refs: tuple[float, ...] | None = None
    scale: float = 1.0
    shift: float = 0.0

    def __post_init__(self):
        for f in ("n_channels", "n_interactions", "correlation", "n_rbf", "radial_features",
                  "radial_layers", "readout_features"):
            if getattr(self, f) < 1:
                raise ValueError(f"MACEConfig.{f} must be >= 1, got {getattr(self, f)}")
        if not 0 <= self.hidden_l <= self.l_max:
            raise ValueError(f"MACEConfig needs 0 <= hidden_l <= l_max, got hidden_l="
                             f"{self.hidden_l}, l_max={self.l_max}")
        if not self.avg_num_neighbors > 0:
            raise ValueError(f"MACEConfig.avg_num_neighbors must be > 0, got {self.avg_num_neighbors}")


# --------------------------------------------------------------------------- descriptors
def _irreps(ls) -> str:
    return "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in ls)


@functools.lru_cache(maxsize=None)
def _sh_poly(l_max: int):
    """Spherical harmonics 0..l_max of a unit vector (component normalisation)."""
    cue = _cue()[0]
    return cue.descriptors.spherical_harmonics(cue.O3(1, -1), list(range(l_max + 1))).polynomial


@functools.lru_cache(maxsize=None)
def _message_poly(n_channels: int, in_ls: tuple[int, ...], l_max: int):
    """Channelwise tensor product node ⊗ Y -> degrees <= l_max (natural parity), one weight
    per path and channel; returns (polynomial, output segments [(l, mul)], n_weights)."""
    cue = _cue()[0]
    ir = lambda ls: cue.Irreps("O3", _irreps(ls))  # noqa: E731
    e = cue.descriptors.channelwise_tensor_product(
        n_channels * ir(in_ls), ir(range(l_max + 1)), ir(range(l_max + 1)))
    e = e.squeeze_modes().flatten_coefficient_modes()
    segs = tuple((r.ir.l, r.mul) for r in e.outputs[0].irreps)
    return e.polynomial, segs, e.inputs[0].dim


@functools.lru_cache(maxsize=None)
def _contraction_poly(n_channels: int, l_max: int, out_ls: tuple[int, ...], nu: int):
    """Symmetric contraction of A (channels × degrees 0..l_max) to degrees 1..nu, projected on
    ``out_ls``; returns (polynomial, n_weights)."""
    cue = _cue()[0]
    ir = lambda ls: cue.Irreps("O3", _irreps(ls))  # noqa: E731
    e = cue.descriptors.symmetric_contraction(n_channels * ir(range(l_max + 1)),
                                              n_channels * ir(out_ls), tuple(range(1, nu + 1)))
    return e.polynomial, e.inputs[0].dim


def _to_flat(x: dict[int, jax.Array], ls) -> jax.Array:
    """{l: (N, C, 2l+1)} -> (N, Σ C (2l+1)) in cuequivariance's (irrep, mul) layout."""
    return jnp.concatenate([jnp.swapaxes(x[l], 1, 2).reshape(x[l].shape[0], -1) for l in ls], -1)


def _from_flat(y: jax.Array, segs) -> dict[int, jax.Array]:
    """Inverse of :func:`_to_flat` for segments [(l, mul)]; equal degrees are stacked on C."""
    out: dict[int, list] = {}
    k = 0
    for l, mul in segs:
        size = mul * (2 * l + 1)
        out.setdefault(l, []).append(jnp.swapaxes(y[:, k:k + size].reshape(-1, 2 * l + 1, mul), 1, 2))
        k += size
    return {l: v[0] if len(v) == 1 else jnp.concatenate(v, axis=1) for l, v in out.items()}


def _method(method: str) -> str:
    if method == "auto":
        return "uniform_1d" if jax.default_backend() == "gpu" else "naive"
    return method


def _run(poly, inputs, n_out: int, size: int, method: str, indices=None) -> jax.Array:
    cuex = _cue()[1]
    dtype = inputs[-1].dtype
    [y] = cuex.segmented_polynomial(poly, inputs, [jax.ShapeDtypeStruct((n_out, size), dtype)],
                                    indices=indices, method=_method(method))
    return y


def polynomial_envelope(d: jax.Array, cutoff: float, p: int = 5) -> jax.Array:
    """1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = d/rc; zero beyond rc
    with p - 1 vanishing derivatives there (DimeNet's envelope)."""
    x = d / cutoff
    val = (1.0 - 0.5 * (p + 1) * (p + 2) * x ** p + p * (p + 2) * x ** (p + 1)
           - 0.5 * p * (p + 1) * x ** (p + 2))
    return jnp.where(x < 1.0, val, 0.0)


# --------------------------------------------------------------------------- layers
def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), shape) / np.sqrt(max(fan_in, 1)))


class IrrepsLinear(nnx.Module):
    """Channel mixing per degree: ``{l: (N, C_in, 2l+1)} -> {l: (N, C_out, 2l+1)}`` for the
    degrees in ``ls`` (equivariant: the same matrix acts on every m). With ``n_elements``
    the matrices depend on the element of each atom (``z``)."""

    def __init__(self, c_in: dict[int, int], c_out: int, ls: tuple[int, ...],
                 rngs: nnx.Rngs, n_elements: int | None = None):
        self.ls = tuple(l for l in ls if l in c_in)
        lead = () if n_elements is None else (n_elements,)
        self.w = nnx.Dict({str(l): _normal(rngs, lead + (c_in[l], c_out), c_in[l])
                           for l in self.ls})
        self.indexed = n_elements is not None

    def __call__(self, x: dict[int, jax.Array], z: jax.Array | None = None) -> dict[int, jax.Array]:
        if self.indexed:
            return {l: jnp.einsum("nci,ncd->ndi", x[l], self.w[str(l)][...][z]) for l in self.ls}
        return {l: jnp.einsum("nci,cd->ndi", x[l], self.w[str(l)][...]) for l in self.ls}


class RadialMLP(nnx.Module):
    """Bias-free SiLU MLP from the radial basis to per-path, per-channel weights (zero
    radial input gives zero weights, so messages vanish smoothly at the cutoff)."""

    def __init__(self, n_in: int, width: int, depth: int, n_out: int, rngs: nnx.Rngs):
        sizes = [n_in] + [width] * depth + [n_out]
        self.layers = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.silu(layer(x))
        return self.layers[-1](x)


class Interaction(nnx.Module):
    """Messages → atomic basis ``A = {l: (N, C, 2l+1)}``, l = 0..l_max. With ``n_elements``
    the output mixing depends on the receiver's element."""

    def __init__(self, cfg: MACEConfig, in_ls: tuple[int, ...], rngs: nnx.Rngs,
                 n_elements: int | None = None):
        C = cfg.n_channels
        self.cfg, self.in_ls = cfg, in_ls
        _, segs, n_w = _message_poly(C, in_ls, cfg.l_max)
        self.up = IrrepsLinear({l: C for l in in_ls}, C, in_ls, rngs)
        self.radial = RadialMLP(cfg.n_rbf, cfg.radial_features, cfg.radial_layers, n_w, rngs)
        n_in = {l: sum(m for k, m in segs if k == l) for l in range(cfg.l_max + 1)}
        self.out = IrrepsLinear(n_in, C, tuple(range(cfg.l_max + 1)), rngs, n_elements=n_elements)

    def __call__(self, h, sh, radial, senders, receivers, z):
        cfg = self.cfg
        poly, segs, _ = _message_poly(cfg.n_channels, self.in_ls, cfg.l_max)
        x = _to_flat(self.up(h), self.in_ls)
        n = x.shape[0]
        y = _run(poly, [self.radial(radial), x, sh], n, poly.outputs[0].size, cfg.method,
                 indices=[None, senders, None, receivers])
        return self.out(_from_flat(y / cfg.avg_num_neighbors, segs), z)


class SymmetricContraction(nnx.Module):
    """Body order ν+1 features ``{l_out: (N, C, 2l+1)}`` from A: per channel, the
    symmetric tensor powers of A (degree 1..ν) projected on the degrees ``out_ls``,
    weighted per element, basis vector and channel."""

    def __init__(self, cfg: MACEConfig, out_ls: tuple[int, ...], rngs: nnx.Rngs):
        self.cfg, self.out_ls = cfg, out_ls
        _, n_w = _contraction_poly(cfg.n_channels, cfg.l_max, out_ls, cfg.correlation)
        per_channel = n_w // cfg.n_channels
        self.w = nnx.Param(jax.random.normal(rngs.params(), (cfg.max_z + 1, n_w))
                           / np.sqrt(per_channel / len(out_ls)))

    def __call__(self, a: dict[int, jax.Array], z: jax.Array) -> dict[int, jax.Array]:
        cfg = self.cfg
        poly, _ = _contraction_poly(cfg.n_channels, cfg.l_max, self.out_ls, cfg.correlation)
        x = _to_flat(a, range(cfg.l_max + 1))
        y = _run(poly, [self.w[...], x], x.shape[0], poly.outputs[0].size, cfg.method,
                 indices=[z, None, None])
        return _from_flat(y, [(l, cfg.n_channels) for l in self.out_ls])


class MACEFeatures(nnx.Module):
    """Embedding + interaction/product layers: ``(batch) -> list of {l: (N, C, 2l+1)}``
    (the node features after each layer)."""

    def __init__(self, cfg: MACEConfig, rngs: nnx.Rngs):
        C, nz = cfg.n_channels, cfg.max_z + 1
        self.cfg = cfg
        self.embedding = nnx.Embed(nz, C, rngs=rngs)
        hidden = tuple(range(cfg.hidden_l + 1))
        self.interactions, self.products, self.mixes, self.skips = (
            nnx.List([]), nnx.List([]), nnx.List([]), nnx.List([]))
        in_ls = (0,)
        for t in range(cfg.n_interactions):
            out_ls = (0,) if t == cfg.n_interactions - 1 else hidden
            by_element = t == 0 and cfg.first_message_by_element
            self.interactions.append(Interaction(cfg, in_ls, rngs, nz if by_element else None))
            self.products.append(SymmetricContraction(cfg, out_ls, rngs))
            self.mixes.append(IrrepsLinear({l: C for l in out_ls}, C, out_ls, rngs))
            # the first layer's residual is optional (its input is the bare element embedding)
            self.skips.append(None if t == 0 and not cfg.first_residual else
                              IrrepsLinear({l: C for l in in_ls}, C, out_ls, rngs, n_elements=nz))
            in_ls = out_ls

    def __call__(self, batch: graph.Batch) -> list[dict[int, jax.Array]]:
        cfg = self.cfg
        vec = graph.edge_vectors(batch)
        d = graph.safe_norm(vec)
        unit = vec / jnp.where(d > 0, d, 1.0)[:, None]
        sh = _run(_sh_poly(cfg.l_max), [unit], unit.shape[0], (cfg.l_max + 1) ** 2, cfg.method)
        env = polynomial_envelope(d, cfg.cutoff, cfg.envelope_p) * batch.edges["mask"]
        radial = bessel_rbf(d, cfg.n_rbf, cfg.cutoff) * np.sqrt(2.0 / cfg.cutoff) * env[:, None]
        z = batch.nodes["species"]
        h = {0: self.embedding(z)[:, :, None]}
        layers = []
        for inter, prod, mix, skip in zip(self.interactions, self.products, self.mixes, self.skips):
            a = inter(h, sh, radial, batch.senders, batch.receivers, z)
            new = mix(prod(a, z))
            if skip is not None:
                sc = skip(h, z)
                new = {l: new[l] + sc[l] if l in sc else new[l] for l in new}
            h = new
            layers.append(h)
        return layers


class MACE(nnx.Module):
    """``MACE(cfg, rngs)(batch) -> {"energy": (G,) eV, "atomic_energies": (N,) eV}``."""

    def __init__(self, cfg: MACEConfig, rngs: nnx.Rngs):
        C = cfg.n_channels
        self.cfg = cfg
        self.features = MACEFeatures(cfg, rngs)
        self.readouts = nnx.List([nnx.Linear(C, 1, use_bias=False, rngs=rngs)
                                  for _ in range(cfg.n_interactions - 1)])
        self.last1 = nnx.Linear(C, cfg.readout_features, use_bias=False, rngs=rngs)
        self.last2 = nnx.Linear(cfg.readout_features, 1, use_bias=False, rngs=rngs)
        self.atom_refs = atom_ref_table(cfg.max_z, cfg.atom_refs)

    def __call__(self, batch: graph.Batch) -> dict[str, jax.Array]:
        cfg = self.cfg
        layers = self.features(batch)
        y = sum(r(h[0][:, :, 0])[:, 0] for r, h in zip(self.readouts, layers[:-1]))
        y = y + self.last2(jax.nn.silu(self.last1(layers[-1][0][:, :, 0])))[:, 0]
        z = batch.nodes["species"]
        e_atom = (cfg.scale * y + cfg.shift + self.atom_refs[...][z]) * batch.nodes["mask"]
        return {"energy": graph.graph_sum(e_atom, batch), "atomic_energies": e_atom}


def mean_neighbors(records: Sequence[Any]) -> float:
    """Mean number of neighbours per atom (edges per atom) of graph records: the
    ``avg_num_neighbors`` that MACE fits on its training set."""
    if not records:
        raise ValueError("cannot count neighbours of an empty training set")
    return float(np.mean([r.n_edge / r.n_node for r in records]))


def mace(cfg: MACEConfig | None = None, **kwargs) -> Model:
    """MACE energy model through the protocol (``apply`` gives energies; wrap it with
    :func:`jaxmat.core.potential.potential` for forces and stress). Needs the ``mace``
    extra (cuequivariance-jax); the sparse batch layout only. Models trained with mace-torch
    or mlip: :mod:`jaxmat.models.mace_import`."""
    cfg = cfg or MACEConfig(**kwargs)
    _cue()
    return from_nnx(lambda rngs: MACE(cfg, rngs), name="MACE", config=cfg,
                    graph=GraphSpec(cfg.cutoff, layouts=("sparse",)))


register("mace", mace, MACEConfig)
