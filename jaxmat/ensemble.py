"""Committees (ensembles) as a leading member axis on the params pytree.

``params = init(model, key, batch, n)`` has shape ``(n, ...)`` on every leaf;
``apply(model, params, batch)`` evaluates all members in one ``vmap`` and returns the
per-member outputs stacked on axis 0; :func:`stats` gives mean and variance.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmat.protocol import Model, Outputs, Params


def size(params: Params) -> int:
    """Number of members (the leading axis shared by every leaf)."""
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree_util.tree_leaves(params)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"committee params must share one leading member axis, got sizes {sizes}")
    return sizes.pop()


def init(model: Model, key: jax.Array, example_batch, n_members: int) -> Params:
    """``n_members`` independent initialisations (one key each), stacked on axis 0."""
    if n_members < 1:
        raise ValueError(f"committee size must be >= 1, got {n_members}")
    keys = jax.random.split(key, n_members)
    return jax.vmap(lambda k: model.init(k, example_batch))(keys)


def apply(model: Model, params: Params, batch) -> Outputs:
    """Every member on the same batch: each output gains a leading member axis."""
    size(params)
    return jax.vmap(model.apply, in_axes=(0, None))(params, batch)


def stats(outputs: Outputs, keys: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
    """Committee mean and variance of per-member outputs: ``{k}_mean``, ``{k}_var``.

    For ``forces`` (M, N, 3) also ``forces_var_atom`` (N,): the variance summed over xyz.
    """
    out = {}
    for k in keys or tuple(outputs):
        v = outputs[k]
        out[f"{k}_mean"] = jnp.mean(v, axis=0)
        out[f"{k}_var"] = jnp.var(v, axis=0)
    if "forces_var" in out:
        out["forces_var_atom"] = jnp.sum(out["forces_var"], axis=-1)
    return out


def member(params: Params, k: int) -> Params:
    """The parameters of member ``k``."""
    return jax.tree_util.tree_map(lambda x: x[k], params)


def stack(members: list[Params]) -> Params:
    """Stack single-model params into committee params."""
    if not members:
        raise ValueError("cannot stack an empty list of members")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)
