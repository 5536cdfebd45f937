"""The model protocol: a model is a pair of pure functions over a params pytree.

``init(key, example_batch) -> params`` and ``apply(params, batch) -> dict[str, Array]``.
Models with stochastic layers (dropout) may also give
``apply_train(params, batch, key) -> dict``; tools fall back to ``apply``.

Any Flax NNX or Linen module plugs in through :func:`from_nnx` / :func:`from_linen`;
nothing downstream (training, ensembles, gradients, attacks) sees a module class.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Params = Any
Batch = Any
Outputs = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Model:
    """An ``init``/``apply`` pair (hashable, so it can be a static jit argument)."""

    init: Callable[[jax.Array, Batch], Params]
    apply: Callable[[Params, Batch], Outputs]
    apply_train: Callable[[Params, Batch, jax.Array], Outputs] | None = None
    name: str = "model"

    def train_apply(self, params: Params, batch: Batch, key: jax.Array) -> Outputs:
        """Training-mode forward pass (dropout on when the model has any)."""
        if self.apply_train is None:
            return self.apply(params, batch)
        return self.apply_train(params, batch, key)


def _as_dict(out: Any) -> Outputs:
    if isinstance(out, dict):
        return out
    return {"output": out}


def from_nnx(factory: Callable[[Any], Any], name: str | None = None) -> Model:
    """Wrap an NNX module: ``factory(rngs) -> module`` with ``module(batch) -> dict | Array``.

    Params are the module's ``nnx.Param`` variables as a plain nested dict; any other
    state (rng streams, constants) is fixed at wrap time. A module with ``nnx.Dropout``
    gets an ``apply_train`` that reseeds its rng streams from the given key.
    A bare array output is returned under the key ``"output"``.
    """
    from flax import nnx

    module0 = factory(nnx.Rngs(0))
    graphdef, _, rest = nnx.split(module0, nnx.Param, ...)
    abstract = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(0))), nnx.Param, ...)[1]
    rng_tags = sorted({v.tag for _, v in nnx.to_flat_state(rest) if isinstance(v, nnx.RngKey)})

    def init(key: jax.Array, example_batch: Batch = None) -> Params:
        _, params, _ = nnx.split(factory(nnx.Rngs(key)), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    def _merge(params: Params):
        state = jax.tree_util.tree_map(lambda x: x, abstract)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state, jax.tree_util.tree_map(lambda x: x, rest))

    def apply(params: Params, batch: Batch) -> Outputs:
        module = _merge(params)
        module.eval()
        return _as_dict(module(batch))

    def apply_train(params: Params, batch: Batch, key: jax.Array) -> Outputs:
        module = _merge(params)
        module.train()
        nnx.reseed(module, **{t: key for t in rng_tags})
        return _as_dict(module(batch))

    return Model(init, apply, apply_train if rng_tags else None, name or type(module0).__name__)


def from_linen(module: Any, name: str | None = None, dropout: bool = False) -> Model:
    """Wrap a Linen module whose ``__call__(batch, deterministic=True)`` returns a dict or array.

    With ``dropout=True`` training calls pass ``deterministic=False`` and a ``dropout`` rng.
    """

    def init(key: jax.Array, example_batch: Batch) -> Params:
        return module.init({"params": key, "dropout": key}, example_batch)["params"]

    def apply(params: Params, batch: Batch) -> Outputs:
        kw = {"deterministic": True} if dropout else {}
        return _as_dict(module.apply({"params": params}, batch, **kw))

    def apply_train(params: Params, batch: Batch, key: jax.Array) -> Outputs:
        return _as_dict(module.apply({"params": params}, batch, deterministic=False,
                                     rngs={"dropout": key}))

    return Model(init, apply, apply_train if dropout else None, name or type(module).__name__)


def count_params(params: Params) -> int:
    """Number of scalar parameters in a params pytree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
