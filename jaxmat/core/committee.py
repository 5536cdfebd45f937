"""Committees as a leading member axis on the params pytree, and their statistics.

``init`` gives stacked params ``(n, ...)``; :func:`apply` evaluates every member in one
``vmap``; :func:`stats` is the one place where member outputs become mean and variance.
Training committees lives in :mod:`jaxmat.core.ensemble`.

Names (population variance over members, axis 0 of the outputs):

* ``{k}_mean``, ``{k}_var`` for every output ``k`` (units of ``k`` and its square);
* ``forces_var`` (N, 3) eV²/Å², ``forces_var_atom`` (N,) eV²/Å²: summed over xyz;
* ``forces_var_graph`` (G,) eV²/Å² (given the batch): the mean of ``forces_var`` over the
  real atoms and xyz components of each graph (0 for padding graphs) — the variance in
  the adversarial objective (:mod:`jaxmat.workflows.adversarial.attack`) and the selection score
  (:mod:`jaxmat.workflows.adversarial.select`); its square root is the committee force σ (eV/Å).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.core import graph
from jaxmat.core.protocol import Model, Outputs, Params


def stats(outputs: dict[str, jax.Array], keys: Sequence[str] | None = None,
          batch: Any = None) -> dict[str, jax.Array]:
    """Mean and variance over the leading member axis of per-member ``outputs`` (jit-able).

    ``keys`` restricts the outputs (default: all); ``batch`` (the graph batch the outputs
    belong to) adds ``forces_var_graph``.
    """
    keys = tuple(outputs) if keys is None else tuple(keys)
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise ValueError(f"committee outputs have no {missing}; found {sorted(outputs)}")
    out = {}
    for k in keys:
        v = outputs[k]
        out[f"{k}_mean"] = jnp.mean(v, axis=0)
        out[f"{k}_var"] = jnp.var(v, axis=0)
    if "forces_var" in out:
        out["forces_var_atom"] = jnp.sum(out["forces_var"], axis=-1)
        if batch is not None:
            out["forces_var_graph"] = per_graph_mean(out["forces_var_atom"] / 3.0, batch)
    return out


def per_graph_mean(x: jax.Array, batch: Any) -> jax.Array:
    """(G,) mean of per-atom values ``x`` (N,) over the real atoms of each graph (0 for
    padding graphs); works for both batch layouts."""
    total = graph.graph_sum(jnp.where(batch.nodes["mask"], x, 0.0), batch)
    return total / jnp.maximum(batch.globals["n_atoms"], 1.0)


def size(params: Params) -> int:
    """Number of members (the leading axis shared by every leaf)."""
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree_util.tree_leaves(params)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"committee params must share one leading member axis, got sizes {sizes}")
    return sizes.pop()


def is_committee(model: Model, params: Params, example) -> bool:
    """True if every leaf of ``params`` has one more (leading) axis than ``model.init`` gives
    on ``example`` (a committee of ``model``), False if they match it; ValueError otherwise."""
    single = jax.eval_shape(model.init, jax.random.key(0), example)
    got = [tuple(jnp.shape(x)) for x in jax.tree_util.tree_leaves(params)]
    ref = [tuple(x.shape) for x in jax.tree_util.tree_leaves(single)]
    if len(got) != len(ref):
        raise ValueError(f"params have {len(got)} arrays but the model expects {len(ref)}")
    if got == ref:
        return False
    if all(g[1:] == r for g, r in zip(got, ref)):
        size(params)
        return True
    raise ValueError("params match neither the model's shapes nor a committee of them "
                     "(a leading member axis)")


def init(model: Model, key: jax.Array, example_batch, n_members: int) -> Params:
    """``n_members`` independent initialisations (one key each), stacked on axis 0. Member
    m's key does not depend on ``n_members``, so the first k members of a committee (and,
    after :func:`fit`, their training) are those of a committee of k."""
    if n_members < 1:
        raise ValueError(f"committee size must be >= 1, got {n_members}")
    keys = jax.random.split(key, n_members)
    return jax.vmap(lambda k: model.init(k, example_batch))(keys)


def apply(model: Model, params: Params, batch) -> Outputs:
    """Every member on the same batch: each output gains a leading member axis."""
    size(params)
    return jax.vmap(model.apply, in_axes=(0, None))(params, batch)


def member(params: Params, k: int) -> Params:
    """The parameters of member ``k``."""
    return jax.tree_util.tree_map(lambda x: x[k], params)


def stack(members: list[Params]) -> Params:
    """Stack single-model params into committee params."""
    if not members:
        raise ValueError("cannot stack an empty list of members")
    try:
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)
    except ValueError as err:
        raise ValueError(f"cannot stack members with different structures or shapes: {err}") from None


def check_finite(outputs: Outputs) -> Outputs:
    """Raise ``ValueError`` naming the output and the members that gave NaN/inf.

    ``outputs`` are per-member outputs (leading member axis); returns them unchanged.
    Call it outside ``jit`` (it reads the values on the host).
    """
    for k, v in outputs.items():
        v = np.asarray(v)
        if v.size and not np.all(np.isfinite(v)):
            bad = np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1)) if v.ndim else []
            raise ValueError(f"non-finite (NaN/inf) predictions in '{k}' from member(s) "
                             f"{[int(b) for b in bad]}")
    return outputs


def stack_one(tree: Any) -> Any:
    """A single model's pytree as a committee of one (leading axis of length 1)."""
    return jax.tree_util.tree_map(lambda x: x[None], tree)


def first(tree: Any) -> Any:
    """Member 0 of a committee pytree, without the member axis."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)
