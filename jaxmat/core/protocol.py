"""The model protocol: a model is a pair of pure functions over a params pytree.

``init(key, example_batch) -> params`` and ``apply(params, batch) -> dict[str, Array]``.
Models with stochastic layers (dropout) may also give
``apply_train(params, batch, key) -> dict``; tools fall back to ``apply``.

Any Flax NNX or Linen module plugs in through :func:`from_nnx` / :func:`from_linen`;
nothing downstream (training, ensembles, gradients, attacks) sees a module class.

A model knows its graph (:class:`GraphSpec`): cutoff, neighbour kind, line graphs and the
batch layouts it supports. ``apply`` refuses a graph batch in a layout the model does not
declare (``ValueError`` naming model and layout), so a model written for the sparse edge
list is never silently fed the dense layout.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Params = Any
Batch = Any
Outputs = dict[str, jax.Array]


LAYOUTS = ("sparse", "dense")


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """The graph a model reads. ``cutoff`` (Å) of the neighbour list (None: the model reads
    no graph, e.g. a spectrum CNN); ``max_neighbors``: keep only the k nearest neighbours
    within the cutoff (k-NN graph); ``line_graph``: batches need bond graphs (ALIGNN);
    ``layouts``: the batch layouts (:mod:`jaxmat.core.graph`) on which the model gives correct
    outputs. The default, sparse only, is right for any model that indexes
    ``senders``/``receivers`` itself."""

    cutoff: float | None = None
    max_neighbors: int | None = None
    line_graph: bool = False
    layouts: tuple[str, ...] = ("sparse",)

    def __post_init__(self):
        bad = [x for x in self.layouts if x not in LAYOUTS]
        if bad or not self.layouts:
            raise ValueError(f"GraphSpec layouts must be a non-empty subset of {LAYOUTS}, "
                             f"got {self.layouts}")
        if self.cutoff is not None and not self.cutoff > 0:
            raise ValueError(f"GraphSpec cutoff must be positive (Å), got {self.cutoff}")
        if self.line_graph and "dense" in self.layouts:
            raise ValueError("line graphs exist only in the sparse layout")
        object.__setattr__(self, "layouts", tuple(self.layouts))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "layouts": list(self.layouts)}

    @property
    def key(self) -> tuple:
        """What decides a structure's graph: ``(cutoff, max_neighbors, line_graph)``."""
        return (self.cutoff, self.max_neighbors, self.line_graph)

    def describe(self) -> str:
        """The graph in words, for error messages."""
        if self.cutoff is None:
            return "no graph"
        nb = "all neighbours" if self.max_neighbors is None else f"{self.max_neighbors} nearest"
        return f"cutoff {self.cutoff:g} Å, {nb}" + (", line graph" if self.line_graph else "")

    @classmethod
    def from_dict(cls, d: dict) -> "GraphSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown graph spec keys {unknown}; expected {sorted(known)}")
        return cls(**{**d, "layouts": tuple(d.get("layouts", ("sparse",)))})


def as_spec(x: Any) -> GraphSpec:
    """The :class:`GraphSpec` of ``x``: a spec, anything with a ``graph`` spec (a
    :class:`Model`, a bundle) or a cutoff in Å (all neighbours within it)."""
    if isinstance(x, GraphSpec):
        return x
    if isinstance(getattr(x, "graph", None), GraphSpec):
        return x.graph
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return GraphSpec(cutoff=float(x))
    raise ValueError(f"expected a GraphSpec, a model (or bundle) that declares one, or a cutoff "
                     f"in Å; got {type(x).__name__}")


def resolve_spec(model: Any, cutoff: float | None = None) -> GraphSpec:
    """The graph spec tools build ``model``'s graphs with: ``model.graph``; ``cutoff`` (Å)
    only completes a model that declares none. ValueError if they disagree or neither is
    given."""
    spec = model.graph
    name = getattr(model, "name", "model")
    if cutoff is not None and not cutoff > 0:
        raise ValueError(f"cutoff must be a positive distance in Å, got {cutoff}")
    if spec.cutoff is not None and cutoff is not None and abs(float(cutoff) - spec.cutoff) > 1e-9:
        raise ValueError(f"cutoff {cutoff} Å disagrees with the graph cutoff {spec.cutoff} Å of "
                         f"{name}; leave cutoff out (the model knows its graph)")
    if spec.cutoff is None and cutoff is None:
        raise ValueError(f"{name} declares no graph cutoff (model.graph.cutoff is None): "
                         "declare one with graph=jaxmat.GraphSpec(cutoff=...), pass a cutoff "
                         "(Å) or give records built with one")
    return spec if cutoff is None else dataclasses.replace(spec, cutoff=float(cutoff))


def batch_layout(batch: Any) -> str | None:
    """``"dense"``, ``"sparse"`` for graph batches (a static property), None otherwise."""
    glob = getattr(batch, "globals", None)
    if not hasattr(batch, "n_node") or not isinstance(glob, dict):
        return None
    return "dense" if "dense" in glob else "sparse"


def check_batch(spec: GraphSpec, batch: Any, name: str = "model") -> None:
    """Raise ``ValueError`` when a graph batch is in a layout ``spec`` does not declare, or
    lacks the line graph the model needs. Non-graph batches pass."""
    layout = batch_layout(batch)
    if layout is None:
        return
    if layout not in spec.layouts:
        raise ValueError(f"{name} supports the batch layouts {list(spec.layouts)}, got a "
                         f"{layout!r} batch; build batches with layout="
                         f"{spec.layouts[0]!r} (or let GraphLoader(model=...) choose)")
    if spec.line_graph and "line" not in batch.edges:
        raise ValueError(f"{name} needs batches with line graphs: build records with "
                         "jaxmat.core.graph.records(structures, model)")


@dataclasses.dataclass(frozen=True)
class Model:
    """An ``init``/``apply`` pair (hashable, so it can be a static jit argument).

    ``graph`` declares the graph the model reads (:class:`GraphSpec`); ``config`` is a
    JSON-able description of how to rebuild the model (set by built-in constructors and
    read by :mod:`jaxmat.core.bundle`; None for a user's own model)."""

    init: Callable[[jax.Array, Batch], Params]
    apply: Callable[[Params, Batch], Outputs]
    apply_train: Callable[[Params, Batch, jax.Array], Outputs] | None = None
    name: str = "model"
    graph: GraphSpec = GraphSpec()
    config: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        for field in ("apply", "apply_train"):
            fn = getattr(self, field)
            if fn is not None:
                object.__setattr__(self, field, _checked(fn, self.graph, self.name))

    def train_apply(self, params: Params, batch: Batch, key: jax.Array) -> Outputs:
        """Training-mode forward pass (dropout on when the model has any)."""
        if self.apply_train is None:
            return self.apply(params, batch)
        return self.apply_train(params, batch, key)


def _checked(fn: Callable, spec: GraphSpec, name: str) -> Callable:
    """``fn`` with the layout check of ``spec`` in front (re-wrapping keeps one check)."""
    fn = getattr(fn, "__wrapped__", fn)

    @functools.wraps(fn)
    def checked(params, batch, *args, **kwargs):
        check_batch(spec, batch, name)
        return fn(params, batch, *args, **kwargs)

    return checked


_STATEFUL = (
    "{name} has layers with running state ({found}), e.g. BatchNorm: the model protocol "
    "trains pure functions of params, so running statistics would be silently frozen. Use "
    "a stateless normalisation (LayerNorm, RMSNorm, GroupNorm) instead.")


def _as_dict(out: Any) -> Outputs:
    if isinstance(out, dict):
        return out
    return {"output": out}


def from_nnx(factory: Callable[[Any], Any], name: str | None = None,
             graph: GraphSpec | None = None, config: Any = None) -> Model:
    """Wrap an NNX module: ``factory(rngs) -> module`` with ``module(batch) -> dict | Array``.

    Params are the module's ``nnx.Param`` variables as a plain nested dict; any other
    state (rng streams, constants) is fixed at wrap time. Running state (``nnx.BatchStat``,
    i.e. BatchNorm) raises ``ValueError`` rather than being frozen. A module with ``nnx.Dropout``
    gets an ``apply_train`` that reseeds its rng streams from the given key.
    A bare array output is returned under the key ``"output"``. ``graph`` declares the
    graph the module reads (default: sparse layout only).
    """
    from flax import nnx

    module0 = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))  # shapes only: no eager init
    stats = [".".join(map(str, path)) for path, _ in
             nnx.to_flat_state(nnx.state(module0, nnx.BatchStat))]
    if stats:
        raise ValueError(_STATEFUL.format(name=name or type(module0).__name__,
                                          found=f"nnx.BatchStat variables {stats[:4]}"))
    graphdef, abstract, _ = nnx.split(module0, nnx.Param, ...)
    # the fixed state (rng streams, constants) once, compiled as one program: built eagerly,
    # every initialiser op of every layer would be dispatched and compiled on its own
    rest = jax.jit(lambda: nnx.split(factory(nnx.Rngs(0)), nnx.Param, ...)[2])()
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

    return Model(init, apply, apply_train if rng_tags else None, name or type(module0).__name__,
                 graph or GraphSpec(), config)


def from_linen(module: Any, name: str | None = None, dropout: bool = False,
               graph: GraphSpec | None = None, config: Any = None) -> Model:
    """Wrap a Linen module whose ``__call__(batch, deterministic=True)`` returns a dict or array.

    With ``dropout=True`` training calls pass ``deterministic=False`` and a ``dropout`` rng.
    ``init`` raises ``ValueError`` for modules with collections besides ``params`` (e.g.
    BatchNorm's ``batch_stats``).
    """

    def init(key: jax.Array, example_batch: Batch) -> Params:
        variables = module.init({"params": key, "dropout": key}, example_batch)
        extra = sorted(set(variables) - {"params"})
        if extra:
            raise ValueError(_STATEFUL.format(name=name or type(module).__name__,
                                              found=f"Linen collections {extra}"))
        return variables["params"]

    def apply(params: Params, batch: Batch) -> Outputs:
        kw = {"deterministic": True} if dropout else {}
        return _as_dict(module.apply({"params": params}, batch, **kw))

    def apply_train(params: Params, batch: Batch, key: jax.Array) -> Outputs:
        return _as_dict(module.apply({"params": params}, batch, deterministic=False,
                                     rngs={"dropout": key}))

    return Model(init, apply, apply_train if dropout else None, name or type(module).__name__,
                 graph or GraphSpec(), config)


def count_params(params: Params) -> int:
    """Number of scalar parameters in a params pytree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
