"""Building blocks shared by the graph models: radial bases, cutoffs, activations, and the
atomic-energy readout of the potentials."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@jax.custom_jvp
def shifted_softplus(x: jax.Array) -> jax.Array:
    """softplus(x) - log 2 (zero at x = 0), SchNet's activation.

    Its derivative is the logistic sigmoid (one fused op, also in second derivatives).
    Written as max(x, 0) + log(1 + exp(-|x|)): as accurate in float32 as ``logaddexp``
    and about half its cost on CPU.
    """
    return (jnp.maximum(x, 0.0) + jnp.log(1.0 + jnp.exp(-jnp.abs(x)))
            - np.log(2.0).astype(np.float32))


@shifted_softplus.defjvp
def _shifted_softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return shifted_softplus(x), jax.nn.sigmoid(x) * t


def gaussian_rbf(d: jax.Array, n_rbf: int, cutoff: float, start: float = 0.0) -> jax.Array:
    """Gaussians on an even grid from ``start`` to ``cutoff`` (Å); shape d.shape + (n_rbf,)."""
    centers = jnp.linspace(start, cutoff, n_rbf, dtype=d.dtype)
    width = (cutoff - start) / max(n_rbf - 1, 1)
    return jnp.exp(-0.5 * ((d[..., None] - centers) / width) ** 2)


def bessel_rbf(d: jax.Array, n_rbf: int, cutoff: float) -> jax.Array:
    """sin(n π d / rc) / d (DimeNet/PaiNN radial basis), finite at d = 0."""
    n = jnp.arange(1, n_rbf + 1, dtype=d.dtype)
    safe_d = jnp.where(d > 0, d, 1.0)[..., None]
    val = jnp.sin(n * jnp.pi * safe_d / cutoff) / safe_d
    return jnp.where(d[..., None] > 0, val, n * jnp.pi / cutoff)


def cosine_cutoff(d: jax.Array, cutoff: float) -> jax.Array:
    """0.5 (cos(π d / rc) + 1) inside the cutoff, 0 outside; smooth at rc."""
    return jnp.where(d < cutoff, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0), 0.0)


class EnergyStats:
    """Mixin of model configs with ``atom_refs`` (eV per element, index = Z) and per-atom
    ``scale``/``shift`` (eV) fitted on the training set:
    ``cfg.with_stats(*jaxmat.core.potential.energy_stats(train))``."""

    def with_stats(self, atom_refs: np.ndarray, scale: float, shift: float = 0.0):
        return dataclasses.replace(self, atom_refs=tuple(float(x) for x in atom_refs),
                                   scale=float(scale), shift=float(shift))


def atom_ref_table(max_z: int, atom_refs: Sequence[float] | None) -> nnx.Variable:
    """Reference energies (eV) indexed by Z (0 for padding and elements not given); float64
    when x64 is enabled (E0s of -1000 eV lose 1e-4 eV in float32)."""
    refs = np.zeros(max_z + 1, np.float64)
    if atom_refs is not None:
        refs[: len(atom_refs)] = atom_refs
    return nnx.Variable(jnp.asarray(refs))


class AtomicEnergyHead(nnx.Module):
    """Per-atom energies (eV) from invariant atom features ``h`` (N, F): a two-layer MLP
    ``y_i`` turned into ``scale * y_i + shift + ref[Z_i]`` (``atom_refs``: eV per element,
    index = Z; padding atoms give 0).  Shared by SchNet and PaiNN."""

    def __init__(self, n_features: int, max_z: int, atom_refs: Sequence[float] | None,
                 scale: float, shift: float, activation: Callable[[jax.Array], jax.Array],
                 rngs: nnx.Rngs):
        self.out1 = nnx.Linear(n_features, n_features // 2, rngs=rngs)
        self.out2 = nnx.Linear(n_features // 2, 1, rngs=rngs)
        self.atom_refs = atom_ref_table(max_z, atom_refs)
        self.scale, self.shift, self.activation = float(scale), float(shift), activation

    def __call__(self, h: jax.Array, z: jax.Array, mask: jax.Array) -> jax.Array:
        y = self.out2(self.activation(self.out1(h)))[:, 0]
        return (self.scale * y + self.shift + self.atom_refs[...][z]) * mask
