"""The MACE layer written on e3nn-jax, kept only for ``benchmarks/mace_libs.py``: messages
by Clebsch–Gordan einsums per path, the symmetric contraction as monomials of each
channel's A (degrees 1..ν) times a fixed projection on e3nn-jax's symmetric-power basis."""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmat.models.mace import IrrepsLinear, MACEConfig, RadialMLP


def _e3nn():
    try:
        import e3nn_jax
    except ImportError as e:  # the optional extra is missing
        raise ImportError("jaxmat.models.mace needs e3nn-jax, which is not installed; "
                          "install the extra: pip install 'jaxmat[mace]'") from e
    return e3nn_jax


def _irreps(ls) -> str:
    return "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in ls)


@functools.lru_cache(maxsize=None)
def _cg(l1: int, l2: int, l3: int) -> np.ndarray:
    """Clebsch–Gordan coefficients (2l1+1, 2l2+1, 2l3+1) in e3nn's real basis."""
    with jax.ensure_compile_time_eval():
        return np.asarray(_e3nn().clebsch_gordan(l1, l2, l3), np.float32)


def _paths(in_ls: tuple[int, ...], l_max: int) -> tuple[tuple[int, int, int], ...]:
    """(l_in, l_sh, l_out) couplings that keep natural parity, all degrees <= l_max."""
    return tuple((l1, l2, l3) for l1 in in_ls for l2 in range(l_max + 1)
                 for l3 in range(abs(l1 - l2), min(l1 + l2, l_max) + 1) if (l1 + l2 + l3) % 2 == 0)


@functools.lru_cache(maxsize=None)
def _monomials(d: int, nu: int) -> tuple[np.ndarray, ...]:
    """Index tuples a1 <= ... <= a_k (k = 1..nu) of the distinct monomials of d variables."""
    return tuple(np.array(list(itertools.combinations_with_replacement(range(d), k)), np.int32)
                 for k in range(1, nu + 1))


@functools.lru_cache(maxsize=None)
def _symmetric_projection(l_max: int, nu: int, l_out: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Matrix (n_monomials, P, 2 l_out + 1) mapping the monomials of degree 1..nu of one
    channel of A (irreps 0e+1o+2e... to ``l_max``) onto the P symmetric-power basis
    vectors of degree ``l_out``, and the number of basis vectors per degree k."""
    e3nn = _e3nn()
    irreps = _irreps(range(l_max + 1))
    d = (l_max + 1) ** 2
    ir = e3nn.Irrep(_irreps([l_out]))
    blocks, counts = [], []
    with jax.ensure_compile_time_eval():
        for k, mono in zip(range(1, nu + 1), _monomials(d, nu)):
            u = e3nn.reduced_symmetric_tensor_product_basis(irreps, k, keep_ir=[ir])
            chunks = [np.asarray(c) for c in u.chunks if c is not None]
            # (d,)*k + (P_k, 2l+1); symmetric in its first k indices
            full = (np.concatenate(chunks, axis=-2) if chunks
                    else np.zeros((d,) * k + (0, ir.dim), np.float32))
            mult = np.array([math.factorial(k) / np.prod([math.factorial(c) for c in
                             np.unique(m, return_counts=True)[1]]) for m in mono])
            blocks.append(full[tuple(mono.T)] * mult[:, None, None])  # (n_mono_k, P_k, M)
            counts.append(full.shape[-2])
    n_mono = sum(b.shape[0] for b in blocks)
    out = np.zeros((n_mono, sum(counts), ir.dim), np.float32)
    r = c = 0
    for b in blocks:
        out[r:r + b.shape[0], c:c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out, tuple(counts)


def monomial_features(x: jax.Array, nu: int) -> jax.Array:
    """The distinct monomials of degree 1..nu of the last axis of ``x`` (d variables), in the
    order of ``itertools.combinations_with_replacement`` per degree, concatenated.

    Built by slices only (degree k = concat_a x_a * [degree k-1 monomials whose first index
    is >= a], a contiguous tail), so the backward pass has no scatter."""
    d = x.shape[-1]
    degrees, prev = [x], x
    for _ in range(1, nu):
        # first position of a monomial starting with index a, in the previous degree
        firsts = np.cumsum([0] + [_count(d - a, len(degrees) - 1) for a in range(d)])[:-1]
        prev = jnp.concatenate([x[..., a:a + 1] * prev[..., firsts[a]:] for a in range(d)], axis=-1)
        degrees.append(prev)
    return jnp.concatenate(degrees, axis=-1)


def _count(n_vars: int, degree: int) -> int:
    """Number of monomials of exactly ``degree`` in ``n_vars`` variables."""
    return math.comb(n_vars + degree - 1, degree)


class Interaction(nnx.Module):
    """Messages → atomic basis ``A = {l: (N, C, 2l+1)}``, l = 0..l_max."""

    def __init__(self, cfg: MACEConfig, in_ls: tuple[int, ...], rngs: nnx.Rngs):
        C = cfg.n_channels
        self.cfg, self.in_ls = cfg, in_ls
        self.paths = _paths(in_ls, cfg.l_max)
        self.up = IrrepsLinear({l: C for l in in_ls}, C, in_ls, rngs)
        self.radial = RadialMLP(cfg.n_rbf, cfg.radial_features, cfg.radial_layers,
                                len(self.paths) * C, rngs)
        n_paths = {l: sum(p[2] == l for p in self.paths) * C for l in range(cfg.l_max + 1)}
        self.out = IrrepsLinear(n_paths, C, tuple(range(cfg.l_max + 1)), rngs)

    def __call__(self, h, sh, radial, senders, receivers):
        C, n = self.cfg.n_channels, h[0].shape[0]
        h = self.up(h)
        hs = {l: h[l][senders] for l in self.in_ls}  # (E, C, 2l+1)
        w = self.radial(radial).reshape(radial.shape[0], len(self.paths), C)
        msgs: dict[int, list] = {}
        for k, (l1, l2, l3) in enumerate(self.paths):
            m = jnp.einsum("eci,ej,ijk->eck", hs[l1], sh[l2], _cg(l1, l2, l3))
            msgs.setdefault(l3, []).append(m * w[:, k, :, None])
        a = {l: jax.ops.segment_sum(jnp.concatenate(m, axis=1), receivers, n)
             / self.cfg.avg_num_neighbors for l, m in msgs.items()}
        return self.out(a)


class SymmetricContraction(nnx.Module):
    """Body order ν+1 features ``{l_out: (N, C, 2l+1)}`` from A: per channel, the
    symmetric tensor powers of A (degree 1..ν) projected on degree l_out, weighted per
    element and per basis vector."""

    def __init__(self, cfg: MACEConfig, out_ls: tuple[int, ...], rngs: nnx.Rngs):
        self.cfg, self.out_ls = cfg, out_ls
        C, nz = cfg.n_channels, cfg.max_z + 1
        self.w = nnx.Dict({})
        for l in out_ls:
            proj, _ = _symmetric_projection(cfg.l_max, cfg.correlation, l)
            p = proj.shape[1]
            self.w[str(l)] = nnx.Param(jax.random.normal(rngs.params(), (nz, p, C)) / np.sqrt(p))

    def __call__(self, a: dict[int, jax.Array], z: jax.Array) -> dict[int, jax.Array]:
        cfg = self.cfg
        x = jnp.concatenate([a[l] for l in range(cfg.l_max + 1)], axis=-1)  # (N, C, d)
        feats = monomial_features(x, cfg.correlation)  # (N, C, n_monomials)
        out = {}
        for l in self.out_ls:
            proj, _ = _symmetric_projection(cfg.l_max, cfg.correlation, l)
            n_mono, p, m = proj.shape
            b = (feats @ proj.reshape(n_mono, p * m)).reshape(*feats.shape[:2], p, m)
            out[l] = jnp.einsum("ncpm,npc->ncm", b, self.w[str(l)][...][z])
        return out
