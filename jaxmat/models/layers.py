"""Building blocks shared by the graph models: radial bases, cutoffs, activations."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.custom_jvp
def shifted_softplus(x: jax.Array) -> jax.Array:
    """softplus(x) - log 2 (zero at x = 0), SchNet's activation.

    Its derivative is the logistic sigmoid (one fused op, also in second derivatives).
    """
    return jnp.logaddexp(x, 0.0) - np.log(2.0).astype(np.float32)


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
