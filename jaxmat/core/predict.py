"""One prediction path for every tool: structures -> padded batches -> per-structure outputs.

:func:`predict` builds records from the model's graph spec (cutoff Å, k nearest
neighbours, line graphs) and batches them with one :class:`jaxmat.core.graph.Batcher` per
(model, layout, batch size) — its budget kept across calls and grown only when a structure
does not fit — evaluates one jitted function per (model, committee or not, keys), and strips
the padding.

Committee params (a leading member axis, :mod:`jaxmat.core.ensemble`) give the member mean
under each output's own name plus the statistics of :func:`jaxmat.core.committee.stats`
(``energy_var``, ``forces_var``, ``forces_var_atom``, ``forces_var_graph``, ...).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxmat.core import committee, graph
from jaxmat.core.protocol import Model, Params

_MAX_CACHED = 64
_FNS: OrderedDict = OrderedDict()  # (model, committee?, keys, members) -> jitted function
_BATCHERS: dict = {}               # (model, layout, batch_size) -> graph.Batcher
_COMMITTEE: dict = {}              # (model, params shapes) -> bool


def predict(model: Model, params: Params, data: Sequence[Any], *, batch_size: int = 32,
            keys: Sequence[str] | None = None, layout: str = "auto",
            members: bool = False,
            calibration: dict | None = None) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Outputs of ``model`` for every structure of ``data`` (``graph.Record``s or ASE
    ``Atoms``; Atoms need a model with a graph cutoff), in input order.

    Per-graph outputs come as arrays ``(S, ...)``, per-atom outputs as lists of ``(n_i,
    ...)`` arrays (float64). ``keys`` selects outputs (default: all). ``layout`` is
    ``"sparse"``, ``"dense"`` or ``"auto"`` (dense where the model declares it and it pays, the
    choice of :func:`jaxmat.core.graph.resolve_layout`, as in training).
    Committee params give means, variances (:mod:`jaxmat.core.committee`) and, with
    ``members=True``, ``{key}_members`` with the member axis first: ``(M, S, ...)`` or
    lists of ``(M, n_i, ...)``. ``calibration`` (a bundle's, ``jaxmat.load(path).calibration``)
    scales the variances to calibrated ones (:func:`jaxmat.core.calibrate.scale_outputs`);
    without it they are the raw committee variances.
    """
    p = plan(model, data, batch_size, layout)
    fn = None
    parts: list[tuple[dict, dict]] = []
    for grp, b in zip(p.groups, p.batches()):
        if fn is None:
            fn = compiled(model, params, b, keys, members)
        main, per_member = jax.device_get(fn(params, b))
        parts.append((_unpad(main, b, grp, p, 0, model.name),
                      _unpad(per_member, b, grp, p, 1, model.name)))
    out = _join([m for m, _ in parts], 0)
    out.update({f"{k}_members": v for k, v in _join([m for _, m in parts], 1).items()})
    if calibration:
        from jaxmat.core.calibrate import scale_outputs

        out = scale_outputs(out, calibration)
    return out


@dataclasses.dataclass
class Plan:
    """Records (targets stripped), the layout, the budget and the groups of record indices
    that :func:`predict` batches."""

    records: list[graph.Record]
    layout: str
    budget: graph.Budget
    groups: list[list[int]]

    def batches(self) -> Iterator[graph.Batch]:
        for grp in self.groups:
            yield graph.batch([self.records[k] for k in grp], self.budget, layout=self.layout)


def plan(model: Model, data: Sequence[Any], batch_size: int = 32,
         layout: str = "auto") -> Plan:
    """The batching of :func:`predict`: records of ``model.graph``, layout and budget
    (the model's kept :class:`graph.Batcher`)."""
    key = (model, layout, batch_size)
    if key not in _BATCHERS:
        _BATCHERS[key] = graph.Batcher(model, batch_size, layout)
    return Plan(*_BATCHERS[key].prepare(data))


def compiled(model: Model, params: Params, example: graph.Batch,
             keys: Sequence[str] | None = None, members: bool = False) -> Callable:
    """The jitted ``fn(params, batch) -> (outputs, per-member outputs)`` that :func:`predict`
    uses, cached per (model, committee or not, keys, members)."""
    is_com = _is_committee(model, params, example)
    if members and not is_com:
        raise ValueError("members=True needs committee params (a leading member axis)")
    key = (model, is_com, None if keys is None else tuple(keys), members)
    if key not in _FNS:
        _FNS[key] = jax.jit(_evaluate(model, is_com, key[2], members))
        while len(_FNS) > _MAX_CACHED:
            _FNS.popitem(last=False)
    _FNS.move_to_end(key)
    return _FNS[key]


def compile_count(model: Model) -> int:
    """Programs compiled so far by :func:`predict` for ``model``."""
    return sum(int(fn._cache_size()) for k, fn in _FNS.items() if k[0] == model)


def _is_committee(model: Model, params: Params, example: graph.Batch) -> bool:
    leaves, tree = jax.tree_util.tree_flatten(params)
    key = (model, tree, tuple(np.shape(x) for x in leaves))
    if key not in _COMMITTEE:
        _COMMITTEE[key] = committee.is_committee(model, params, example)
    return _COMMITTEE[key]


def _evaluate(model: Model, is_com: bool, keys: tuple[str, ...] | None, members: bool):
    def pick(out):
        want = tuple(out) if keys is None else keys
        missing = [k for k in want if k not in out]
        if missing:
            raise ValueError(f"{model.name} gives no {missing}; its outputs are {sorted(out)}")
        return {k: out[k] for k in want}

    def fn(params, batch):
        if not is_com:
            return pick(model.apply(params, batch)), {}
        outs = pick(committee.apply(model, params, batch))
        st = committee.stats(outs, batch=batch)
        main = {k: st.pop(f"{k}_mean") for k in outs}
        return {**main, **st}, (outs if members else {})

    return fn


def _unpad(out: dict, b: graph.Batch, grp: list[int], p: Plan, axis: int, name: str) -> dict:
    """Real graphs' rows (arrays) and real atoms per structure (lists) of a batch's outputs."""
    G, N = p.budget.n_graph, p.budget.n_node
    real = np.flatnonzero(np.asarray(b.nodes["mask"]))
    cuts = np.cumsum([p.records[k].n_node for k in grp])[:-1]
    res = {}
    for k, v in out.items():
        v = np.asarray(v)
        v = v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v
        size = v.shape[axis] if v.ndim > axis else None
        if size == G:
            res[k] = np.take(v, np.arange(len(grp)), axis=axis)
        elif size == N:
            res[k] = np.split(np.take(v, real, axis=axis), cuts, axis=axis)
        else:
            raise ValueError(f"{name} output {k!r} has shape {v.shape}: neither per graph "
                             f"({G}) nor per atom ({N}); choose outputs with keys=")
    return res


def _join(parts: list[dict], axis: int) -> dict:
    if not parts or not parts[0]:
        return {}
    return {k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list)
                else np.concatenate([p[k] for p in parts], axis=axis)) for k in parts[0]}
